#!/usr/bin/env python3
"""Collects tools/bench_scale.sh results into one table and a plot.

    python3 tools/plot_scale.py RESULTS_DIR [--out docs]

RESULTS_DIR holds one folder per size (named by its token count) with
meta.json, fio.json, ingest.json, ingest.time, stats.json, du.json,
measure.json, measure.time, query.json, query.time (or skipped.json).
Writes OUT/scale_results.json (every figure, per size), OUT/scale_results.csv
(the headline columns) and OUT/scale_latency.png: query latency against
tokens on log-log axes, msa top-k (cold and warm, p50 with p99 whiskers;
and the cold call without its routing stage) beside exact dense attention
over the same stream, and ingest throughput against the disk's sequential
write.
"""
import argparse
import csv
import json
import os
import sys


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_time(path):
    """Peak RSS (bytes) and wall seconds from /usr/bin/time -v."""
    rss = wall = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("Maximum resident set size"):
                rss = int(line.split(":")[-1]) * 1024
            elif line.startswith("Elapsed (wall clock)"):
                parts = [float(x) for x in line.rsplit(" ", 1)[-1].split(":")]
                wall = 0.0
                for x in parts:
                    wall = wall * 60 + x
    return rss, wall


def collect(results):
    rows = []
    for name in sorted(os.listdir(results), key=lambda s: int(s) if s.isdigit() else 0):
        d = os.path.join(results, name)
        if not name.isdigit() or not os.path.isdir(d):
            continue
        if os.path.exists(os.path.join(d, "skipped.json")):
            rows.append(read_json(os.path.join(d, "skipped.json")))
            continue
        if not os.path.exists(os.path.join(d, "measure.json")):
            print(f"plot_scale: {d} is incomplete, left out", file=sys.stderr)
            continue
        meta = read_json(os.path.join(d, "meta.json"))
        fio = read_json(os.path.join(d, "fio.json"))["jobs"][0]["write"]
        ingest = read_json(os.path.join(d, "ingest.json"))
        du = read_json(os.path.join(d, "du.json"))
        m = read_json(os.path.join(d, "measure.json"))
        q = read_json(os.path.join(d, "query.json"))
        ingest_rss, ingest_wall = read_time(os.path.join(d, "ingest.time"))
        measure_rss, _ = read_time(os.path.join(d, "measure.time"))
        query_rss, query_wall = read_time(os.path.join(d, "query.time"))
        after = ""
        if os.path.exists(os.path.join(d, "loadavg_after.txt")):
            after = open(os.path.join(d, "loadavg_after.txt")).read().split(" ", 1)[-1].strip()
        fio_mbs = fio["bw_bytes"] / 1e6
        row = dict(meta)
        row.update({
            "fio_seq_write_mb_s": fio_mbs,
            "ingest_s": ingest["seconds"],
            "ingest_tokens_per_s": ingest["tokens_per_s"],
            "ingest_in_mb_s": ingest["input_mb_per_s"],
            "ingest_written_mb_s": ingest["written_mb_per_s"],
            "ingest_written_vs_fio": ingest["written_mb_per_s"] / fio_mbs if fio_mbs else None,
            "ingest_append_s": ingest["append_s"],
            "ingest_commit_s": ingest["commit_s"],
            "ingest_wait_for_input_s": ingest["wait_for_input_s"],
            "ingest_commits": ingest["commits"],
            "ingest_peak_rss_bytes": ingest_rss,
            "ingest_wall_s": ingest_wall,
            "store_apparent_bytes": du["apparent_bytes"],
            "store_allocated_bytes": du["allocated_bytes"],
            "store_segments_bytes": du["segments_bytes"],
            "store_catalog_bytes": du["catalog_bytes"],
            "store_router_bytes": du["router_bytes"],
            "blocks": m["blocks_per_stream"],
            "ivf_streams": m["ivf_streams"],
            "open_ms": m["open_ms"],
            "rss_after_open_bytes": m["rss_after_open_bytes"],
            "measure_peak_rss_after_sparse_bytes": m["peak_rss_after_sparse_bytes"],
            "measure_peak_rss_bytes": measure_rss,
            "sparse_cold_p50_ms": m["sparse_cold_ms"]["p50"],
            "sparse_cold_p99_ms": m["sparse_cold_ms"]["p99"],
            "sparse_warm_p50_ms": m["sparse_warm_ms"]["p50"],
            "sparse_warm_p99_ms": m["sparse_warm_ms"]["p99"],
            "sparse_cold_stages_p50_ms": m["sparse_cold_stages_p50"],
            "sparse_warm_stages_p50_ms": m["sparse_warm_stages_p50"],
            "avg_blocks_per_kv_head": m["avg_blocks_per_kv_head"],
            "dense_p50_ms": m["dense_ms"]["p50"],
            "dense_p99_ms": m["dense_ms"]["p99"],
            "dense_samples_timed": m["dense_ms"]["n"],
            "dense_stages_mean_ms": m["dense_stages_mean"],
            "dense_attend_only_p50_ms": m["dense_attend_only_ms"]["p50"],
            "dense_vs_sparse_cold": m["dense_ms"]["p50"] / m["sparse_cold_ms"]["p50"] if m["sparse_cold_ms"]["p50"] else None,
            "needle_hits": m["needle_hits"],
            "needles": m["needles"],
            "needle_hit_rate": m["needle_hit_rate"],
            "quality_rows": m["dense_reference_rows"],
            "mass_recall": m["mass_recall"],
            "output_error": m["output_error"],
            "cli_query_wall_s": query_wall,
            "cli_query_total_ms": q.get("total_ms"),
            "cli_query_peak_rss_bytes": query_rss,
            "loadavg_after": after,
        })
        rows.append(row)
    return rows


CSV_COLUMNS = [
    "tokens", "codec", "fio_seq_write_mb_s", "ingest_tokens_per_s", "ingest_in_mb_s", "ingest_written_mb_s",
    "ingest_written_vs_fio", "ingest_peak_rss_bytes", "store_allocated_bytes", "open_ms", "rss_after_open_bytes",
    "measure_peak_rss_bytes", "sparse_cold_p50_ms", "sparse_cold_p99_ms", "sparse_warm_p50_ms",
    "sparse_warm_p99_ms", "dense_p50_ms", "dense_attend_only_p50_ms", "dense_vs_sparse_cold", "needle_hits",
    "needles", "mass_recall_mean", "output_error_mean", "cli_query_wall_s", "skipped",
]


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            flat = dict(r)
            if isinstance(r.get("mass_recall"), dict):
                flat["mass_recall_mean"] = r["mass_recall"]["mean"]
                flat["output_error_mean"] = r["output_error"]["mean"]
            w.writerow([flat.get(c, "") for c in CSV_COLUMNS])


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "skipped" not in r]
    if not done:
        print("plot_scale: nothing measured, no plot", file=sys.stderr)
        return
    t = [r["tokens"] for r in done]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))

    def series(axis, key50, key99, label, style):
        y = [r[key50] for r in done]
        if key99:
            err = [[0] * len(done), [r[key99] - r[key50] for r in done]]
            axis.errorbar(t, y, yerr=err, fmt=style, capsize=3, label=label)
        else:
            axis.plot(t, y, style, label=label)

    series(ax, "dense_p50_ms", "dense_p99_ms", "dense, store exact mode (read + decode + attend all)", "s-")
    series(ax, "dense_attend_only_p50_ms", None, "dense, compute only (K/V as float32 in RAM)", "s--")
    series(ax, "sparse_cold_p50_ms", "sparse_cold_p99_ms", f"msa top-{done[0]['top_k']}, cold (blocks from disk)", "o-")
    series(ax, "sparse_warm_p50_ms", "sparse_warm_p99_ms", f"msa top-{done[0]['top_k']}, warm (block cache)", "o--")
    stages = [sum(r["sparse_cold_stages_p50_ms"][k] for k in ("fetch", "decode", "attend")) for r in done]
    ax.plot(t, stages, "o:", label="msa cold, read + decode + attend only (routing left out)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens in the stream")
    ax.set_ylabel("one query row, all heads of a GQA group (ms)")
    ax.set_title(f"Attention latency, p50 (whiskers to p99), head dim 128, {done[0]['codec']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    bx.plot(t, [r["fio_seq_write_mb_s"] for r in done], "k^-", label="fio sequential write (1 MiB, O_DIRECT)")
    bx.plot(t, [r["ingest_written_mb_s"] for r in done], "o-", label="msa ingest, segment bytes written")
    bx.plot(t, [r["ingest_in_mb_s"] for r in done], "o--", label="msa ingest, fp16 K/V consumed")
    bx.set_xscale("log")
    bx.set_xlabel("tokens in the stream")
    bx.set_ylabel("MB/s")
    bx.set_ylim(bottom=0)
    bx.set_title("Ingest (synth --into-store) against the disk")
    bx.grid(True, which="both", alpha=0.3)
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot_scale: wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--out", default="docs")
    a = ap.parse_args()
    rows = collect(a.results)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "scale_results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    write_csv(rows, os.path.join(a.out, "scale_results.csv"))
    print(f"plot_scale: wrote {a.out}/scale_results.json and .csv ({len(rows)} sizes)")
    plot(rows, os.path.join(a.out, "scale_latency.png"))


if __name__ == "__main__":
    main()
