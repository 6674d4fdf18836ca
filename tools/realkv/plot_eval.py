#!/usr/bin/env python3
"""PNG plots of the real K/V evaluation (SmolLM2-135M) and the synthetic suite beside it.

    /usr/bin/python3 tools/realkv/plot_eval.py [--out docs/realkv]     # every figure, from committed results
    python3 tools/realkv/plot_eval.py --run OUT --run-only --out OUT/plots   # one run_eval.sh folder

Needs matplotlib (Debian's python3-matplotlib, or `pip install matplotlib`) and
nothing else; reads JSON and BENCHMARKS.md only. Inputs (defaults in brackets):

  --run DIR         a run_eval.sh folder: kv/geometry.json, eval/layer_J[_doc].json,
                    eval_head/layer_J[_doc]_kvG.json (per_head_eval.sh)
                    [tools/realkv/out/run-50000 if present, else the top16
                    reports of --doc-sinks, which are the same msa eval runs]
  --doc-sinks F     doc_sinks_eval.sh's 180 reports (top16 / top16_ds / top43)
                    [tools/realkv/results/doc_sinks_eval_50000.json]
  --one-m F         the 1M-token run [tools/realkv/results/realkv_1m_h100.json]
  --retrieve F      retrieve.py --json with passkey_block_chosen per layer and KV head
                    [tools/realkv/results/retrieve_50000_msa.json]
  --benchmarks F    BENCHMARKS.md: the synthetic suite's table (hybrid summary) [BENCHMARKS.md]

Writes into --out (a missing input skips its figure, saying so):

  realkv_mass_recall_per_layer.png   mass recall mean and p5 of msa's routing against the
                                     block oracle at the same budget, per layer, 50K and 1M
  realkv_needle_hits_per_layer.png   needle (passkey digits) hit rate per layer, both query sets
  realkv_error_per_layer.png         output error mean / p95 and block recall@k per layer
  realkv_needle_hits_per_head.png    per (layer, KV head): msa eval needle hits, and how often
                                     msa chose the passkey's block inside the model (retrieve.py)
  realkv_doc_sinks_per_layer.png     top-k 16, top-k 16 + document sinks, top-k 43, per layer
  realkv_vs_synthetic.png            the synthetic suites (msa synth) beside the real set
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODEL = "SmolLM2-135M-Instruct"
SYNTH_HEADING = "The hybrid summary, and a suite where the bound fails"


def data_date(path, text=""):
    """The date of a result: one written in it, else its last commit's, else its mtime."""
    m = re.search(r"\b(20\d\d-\d\d-\d\d)\b", text)
    if m:
        return m.group(1)
    try:
        d = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%cs", "--", os.path.abspath(path)],
                           capture_output=True, text=True, check=False).stdout.strip()
        if d:
            return d
    except OSError:
        pass
    return datetime.date.fromtimestamp(os.path.getmtime(path)).isoformat()


def rel(path):
    p = os.path.relpath(os.path.abspath(path), ROOT)
    return path if p.startswith("..") else p


def hits(e):
    return round(e["needle_hit_rate"] * e["needles"]), e["needles"]


class Run:
    """Per-layer msa eval reports of one real K/V run: layers[i] = model layer, ev[set][i] = report."""

    def __init__(self, name, source, date, tokens, model_layers, ev, per_head=None):
        self.name, self.source, self.date, self.tokens = name, source, date, tokens
        self.model_layers, self.ev, self.per_head = model_layers, ev, per_head or {}

    def series(self, qset, f):
        return [f(e) for e in self.ev[qset]]


def load_run_dir(d):
    geo = json.load(open(os.path.join(d, "kv", "geometry.json")))
    ev = {"": [], "_doc": []}
    layers = []
    for j, L in enumerate(geo["model_layers"]):
        p0 = os.path.join(d, "eval", f"layer_{j}.json")
        p1 = os.path.join(d, "eval", f"layer_{j}_doc.json")
        if not (os.path.exists(p0) and os.path.exists(p1)):
            continue
        layers.append(L)
        ev[""].append(json.load(open(p0)))
        ev["_doc"].append(json.load(open(p1)))
    if not layers:
        return None
    per_head = {}
    for f in glob.glob(os.path.join(d, "eval_head", "layer_*_kv*.json")):
        m = re.match(r"layer_(\d+)(_doc)?_kv(\d+)\.json$", os.path.basename(f))
        if m:
            per_head[(geo["model_layers"][int(m.group(1))], m.group(2) or "", int(m.group(3)))] = hits(json.load(open(f)))
    date = data_date(os.path.join(d, "eval", "layer_0.json"))
    return Run(f"{geo['tokens']:,} tokens", rel(d), date, geo["tokens"], layers, ev, per_head)


def load_doc_sinks(path, setting="top16"):
    d = json.load(open(path))
    layers = sorted({int(m.group(1)) for k in d if (m := re.match(r"layer_(\d+)_", k))})
    ev = {q: [d[f"layer_{j}{q}_{setting}.json"] for j in layers] for q in ("", "_doc")}
    tokens = ev[""][0]["tokens"]
    return Run(f"{tokens:,} tokens", f"{rel(path)} ({setting})", data_date(path), tokens, layers, ev), d


def load_one_m(path):
    d = json.load(open(path))
    geo = d["geometry"]
    ev = {q: [d["eval"][f"layer_{j}{q}"] for j in range(geo["layers"])] for q in ("", "_doc")}
    return Run(f"{geo['tokens']:,} tokens", rel(path), data_date(path, d.get("what", "")), geo["tokens"],
               geo["model_layers"], ev)


def parse_synthetic(path, summary="hybrid"):
    """Rows of the synthetic suite's table in BENCHMARKS.md (the section SYNTH_HEADING), one summary kind."""
    lines = open(path, encoding="utf-8").read().splitlines()
    start = next((i for i, s in enumerate(lines) if s.startswith("#") and SYNTH_HEADING in s), None)
    if start is None:
        return None
    date = data_date(path, lines[start])
    i = start + 1
    while i < len(lines) and not lines[i].startswith("| suite |"):
        if lines[i].startswith("#"):
            return None
        i += 1
    if i == len(lines):
        return None
    cells = lambda s: [c.strip() for c in s.strip().strip("|").split("|")]  # noqa: E731
    head = cells(lines[i])
    rows = []
    for s in lines[i + 2:]:
        if not s.startswith("|"):
            break
        r = dict(zip(head, cells(s)))
        if r.get("summary") != summary:
            continue
        h, n = (int(x) for x in r["needle hits"].split("/"))
        mean, p5 = (float(x) for x in r["mass recall mean / p5"].split("/"))
        err = float(r["output error mean / p95"].split("/")[0])
        rows.append({"name": r["suite"], "hit_rate": h / n, "hits": f"{h}/{n}", "mass_mean": mean, "mass_p5": p5,
                     "oracle_p5": float(r["block-oracle mass p5"]), "err_mean": err})
    return {"rows": rows, "date": date, "source": f"{rel(path)}, \"{SYNTH_HEADING}\""}


# ---------------------------------------------------------------------------------------------- figures


def save(fig, out, name, made):
    p = os.path.join(out, name)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    made.append(p)
    print(f"plot_eval: wrote {p}")


def title(run):
    return f"{MODEL}, {run.name} — {run.source}, {run.date}"


def fig_mass(runs, out, made):
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 3.8 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        x = run.model_layers
        mk = "o" if len(x) < 15 else "."
        budget = run.ev[""][0]
        ax.plot(x, run.series("", lambda e: e["oracle_block_mass_recall"]["mean"]), mk + "-", color="tab:gray",
                label="block oracle, mean")
        ax.plot(x, run.series("", lambda e: e["oracle_block_mass_recall"]["p5"]), mk + "--", color="tab:gray",
                label="block oracle, p5")
        ax.plot(x, run.series("", lambda e: e["mass_recall"]["mean"]), mk + "-", color="tab:blue",
                label="msa, no-memory q: mean")
        ax.plot(x, run.series("", lambda e: e["mass_recall"]["p5"]), mk + "--", color="tab:blue",
                label="msa, no-memory q: p5")
        ax.plot(x, run.series("_doc", lambda e: e["mass_recall"]["mean"]), mk + "-", color="tab:orange",
                label="msa, in-context q: mean")
        ax.plot(x, run.series("_doc", lambda e: e["mass_recall"]["p5"]), mk + "--", color="tab:orange",
                label="msa, in-context q: p5")
        ax.set_title(f"{title(run)}\ntop-k {budget['top_k']} = {budget['avg_blocks_selected']:.1f} blocks per KV "
                     f"head ({100 * budget['fraction_of_tokens']:.2f}% of tokens), {budget['summary']} summary",
                     fontsize=9)
        ax.set_xlabel("model layer")
        ax.set_ylabel("softmax mass inside the selection")
        ax.set_xticks(x if len(x) < 15 else range(0, max(x) + 1, 2))
        ax.set_ylim(0, None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=3, loc="upper left")
    fig.suptitle("Mass recall per layer: msa's routing against the block oracle at the same budget", fontsize=11)
    fig.tight_layout()
    save(fig, out, "realkv_mass_recall_per_layer.png", made)


def fig_needles(runs, out, made):
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 3.4 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        n = len(run.model_layers)
        xs = range(n)
        w = 0.4
        for k, (q, lab, c) in enumerate((("", "no-memory queries", "tab:blue"),
                                         ("_doc", "in-context queries", "tab:orange"))):
            hs = run.series(q, hits)
            tot = sum(h for h, _ in hs), sum(m for _, m in hs)
            ax.bar([x + (k - 0.5) * w for x in xs], [h / m for h, m in hs], w, color=c,
                   label=f"{lab} ({tot[0]}/{tot[1]})")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(run.model_layers, fontsize=8)
        ax.set_xlabel("model layer")
        ax.set_ylabel(f"needle hit rate (of {run.ev[''][0]['needles']} per layer)")
        ax.set_title(f"{title(run)}\nneedle = the passkey's 5 digit tokens, one per (query, KV head); "
                     f"top-k {run.ev[''][0]['top_k']}", fontsize=9)
        ax.set_ylim(0, max(0.05, ax.get_ylim()[1]))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Passkey needle hits per layer (msa eval)", fontsize=11)
    fig.tight_layout()
    save(fig, out, "realkv_needle_hits_per_layer.png", made)


def fig_error(runs, out, made):
    fig, axes = plt.subplots(len(runs), 2, figsize=(13, 3.4 * len(runs)), squeeze=False)
    for row, run in zip(axes, runs):
        x = run.model_layers
        mk = "o" if len(x) < 15 else "."
        for q, lab, c in (("", "no-memory q", "tab:blue"), ("_doc", "in-context q", "tab:orange")):
            row[0].plot(x, run.series(q, lambda e: e["output_error"]["mean"]), mk + "-", color=c, label=f"{lab}: mean")
            row[0].plot(x, run.series(q, lambda e: e["output_error"]["p95"]), mk + "--", color=c, label=f"{lab}: p95")
            row[1].plot(x, run.series(q, lambda e: e["block_recall"]), mk + "-", color=c, label=lab)
        row[0].set_ylabel("||o_sparse - o_dense|| / ||o_dense||")
        row[1].set_ylabel("block recall@k (vs the oracle's blocks)")
        for ax, what in ((row[0], "output error"), (row[1], "block recall@k")):
            ax.set_xlabel("model layer")
            ax.set_title(f"{what} — {MODEL}, {run.name}\n{run.source}, {run.date}", fontsize=9)
            ax.set_ylim(0, None)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Output error and block recall per layer (msa eval, top-k 16)", fontsize=11)
    fig.tight_layout()
    save(fig, out, "realkv_error_per_layer.png", made)


def heat(ax, m, xlabels, ylabels, vmax, label):
    im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, origin="lower")
    for i, r in enumerate(m):
        for j, v in enumerate(r):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.6 * vmax else "black")
    ax.set_xticks(range(len(xlabels)))
    ax.set_xticklabels(xlabels, fontsize=7)
    ax.set_yticks(range(len(ylabels)))
    ax.set_yticklabels(ylabels, fontsize=8)
    ax.set_xlabel("model layer")
    ax.set_ylabel("KV head")
    plt.colorbar(im, ax=ax, label=label, pad=0.01)


def fig_per_head(run, retrieve_path, out, made):
    panels = []
    if run is not None and run.per_head:
        layers = sorted({L for L, _, _ in run.per_head})
        kv = 1 + max(g for _, _, g in run.per_head)
        for q, lab in (("", "no-memory queries"), ("_doc", "in-context queries")):
            m = [[run.per_head.get((L, q, g), (float("nan"), 0))[0] for L in layers] for g in range(kv)]
            tot = next(v[1] for v in run.per_head.values())
            panels.append((m, layers, kv, tot, f"msa eval, needle hits per KV head, {lab} (of {tot} per cell) — "
                           f"{run.source}/eval_head (per_head_eval.sh), {run.date}", "needle hits"))
    elif run is not None:
        print(f"plot_eval: no per-head msa eval results under {run.source}/eval_head (per_head_eval.sh): "
              "that panel skipped", file=sys.stderr)
    if retrieve_path and os.path.exists(retrieve_path):
        r = json.load(open(retrieve_path))
        date = data_date(retrieve_path)
        for mode, m in r["modes"].items():
            pc = m.get("passkey_block_chosen")
            if not pc:
                continue
            layers = sorted(int(j) for j in pc)
            kv = len(pc[str(layers[0])]["per_kv_head"])
            mat = [[pc[str(L)]["per_kv_head"][g] for L in layers] for g in range(kv)]
            tot = pc[str(layers[0])]["row_kv_head_total"] // kv
            panels.append((mat, [r["layers"][L] for L in layers], kv, tot,
                           f"retrieve.py, {mode} inside every layer (top-k {m['top_k']}"
                           f"{', document sinks' if m.get('document_sinks') else ''}): queries whose passkey block "
                           f"msa chose (of {tot}) — {rel(retrieve_path)}, {date}", "queries"))
    if not panels:
        print("plot_eval: no per-head data: realkv_needle_hits_per_head.png skipped", file=sys.stderr)
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(13, 1.9 * len(panels) + 0.8), squeeze=False)
    for ax, (m, layers, kv, tot, t, lab) in zip(axes[:, 0], panels):
        heat(ax, m, layers, range(kv), max(1, max(max(r) for r in m if r) if m else 1), lab)
        ax.set_title(t, fontsize=8)
    fig.suptitle(f"{MODEL}: the passkey per (layer, KV head), {run.name if run else ''} real K/V", fontsize=11)
    fig.tight_layout()
    save(fig, out, "realkv_needle_hits_per_head.png", made)


def fig_doc_sinks(ds, path, out, made):
    settings = [("top16", "top-k 16", "tab:blue"), ("top16_ds", "top-k 16 + document sinks", "tab:green"),
                ("top43", "top-k 43 (about the same blocks)", "tab:red")]
    layers = sorted({int(m.group(1)) for k in ds if (m := re.match(r"layer_(\d+)_", k))})
    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5))
    date = data_date(path)
    for col, (q, lab) in enumerate((("", "no-memory queries"), ("_doc", "in-context queries"))):
        for s, name, c in settings:
            ev = [ds[f"layer_{j}{q}_{s}.json"] for j in layers]
            blocks = sum(e["avg_blocks_selected"] for e in ev) / len(ev)
            axes[0, col].plot(layers, [e["mass_recall"]["mean"] for e in ev], ".-", color=c,
                              label=f"{name}: mean ({blocks:.1f} blocks)")
            axes[0, col].plot(layers, [e["mass_recall"]["p5"] for e in ev], ".--", color=c, label=f"{name}: p5")
            hs = [hits(e) for e in ev]
            axes[1, col].plot(layers, [h / n for h, n in hs], ".-", color=c,
                              label=f"{name} ({sum(h for h, _ in hs)}/{sum(n for _, n in hs)})")
        axes[0, col].set_ylabel("mass recall")
        axes[1, col].set_ylabel("needle hit rate")
        for ax in axes[:, col]:
            ax.set_xlabel("model layer")
            ax.set_ylim(0, None)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            ax.set_title(f"{lab} — {rel(path)}, {date}", fontsize=8)
    fig.suptitle(f"{MODEL}, {ds[f'layer_{layers[0]}_top16.json']['tokens']:,} tokens: msa eval with document "
                 "sinks against plain routing, per layer (doc_sinks_eval.sh)", fontsize=10)
    fig.tight_layout()
    save(fig, out, "realkv_doc_sinks_per_layer.png", made)


def fig_vs_synthetic(synth, runs, out, made):
    bars = []
    for r in synth["rows"]:
        bars.append((f"synth\n{r['name']}", r, "tab:gray"))
    for run, c in zip(runs, ("tab:blue", "tab:purple")):
        e0 = run.ev[""][0]
        for q, lab in (("", "no-mem q"), ("_doc", "in-ctx q")):
            ev = run.ev[q]
            hs = [hits(e) for e in ev]
            n = len(ev)
            size = f"{run.tokens / 1e6:.0f}M" if run.tokens >= 1e6 else f"{run.tokens // 1000}K"
            bars.append((f"real {size}\n{lab}", {
                "hit_rate": sum(h for h, _ in hs) / sum(m for _, m in hs),
                "mass_mean": sum(e["mass_recall"]["mean"] for e in ev) / n,
                "mass_p5": sum(e["mass_recall"]["p5"] for e in ev) / n,
                "oracle_p5": sum(e["oracle_block_mass_recall"]["p5"] for e in ev) / n,
                "err_mean": sum(e["output_error"]["mean"] for e in ev) / n,
                "budget": 100 * e0["fraction_of_tokens"]}, c))
    metrics = [("hit_rate", "needle hit rate"), ("mass_mean", "mass recall mean"),
               ("mass_p5", "mass recall p5 (bar) and block-oracle p5 (x)"), ("err_mean", "output error mean")]
    fig, axes = plt.subplots(2, 2, figsize=(14, 8))
    for ax, (k, lab) in zip(axes.flat, metrics):
        xs = range(len(bars))
        ax.bar(xs, [b[1][k] for b in bars], color=[b[2] for b in bars])
        if k == "mass_p5":
            ax.plot(xs, [b[1]["oracle_p5"] for b in bars], "kx", label="block oracle p5")
            ax.legend(fontsize=8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([b[0] for b in bars], fontsize=7)
        ax.set_ylabel(lab)
        ax.set_xlabel("data set (synthetic suite, or real run and query set)")
        ax.grid(axis="y", alpha=0.3)
    real = ";\n".join(f"real {r.tokens:,} tokens: {r.source}, {r.date}, top-k {r.ev[''][0]['top_k']} = "
                     f"{100 * r.ev[''][0]['fraction_of_tokens']:.2f}% of tokens, mean over {len(r.model_layers)} "
                     f"layers" for r in runs)
    fig.suptitle(f"Synthetic suite (msa synth, 1M tokens, hybrid summary, top-k 64 = 0.40% of tokens: "
                 f"{synth['source']}, {synth['date']})\nbeside {MODEL} real K/V:\n{real}", fontsize=8)
    fig.tight_layout()
    save(fig, out, "realkv_vs_synthetic.png", made)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    res = os.path.join(HERE, "results")
    ap.add_argument("--run", default=None, help="a run_eval.sh folder [tools/realkv/out/run-50000 if present]")
    ap.add_argument("--run-only", action="store_true", help="only the --run folder's figures")
    ap.add_argument("--doc-sinks", default=os.path.join(res, "doc_sinks_eval_50000.json"))
    ap.add_argument("--one-m", default=os.path.join(res, "realkv_1m_h100.json"))
    ap.add_argument("--retrieve", default=os.path.join(res, "retrieve_50000_msa.json"))
    ap.add_argument("--benchmarks", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "realkv"))
    a = ap.parse_args(argv)
    global plt
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: F811
    plt.rcParams["font.size"] = 8
    os.makedirs(a.out, exist_ok=True)
    made = []

    run = ds = None
    run_dir = a.run or os.path.join(HERE, "out", "run-50000")
    if os.path.exists(os.path.join(run_dir, "kv", "geometry.json")):
        run = load_run_dir(run_dir)
    elif a.run:
        sys.exit(f"plot_eval: {a.run} is not a run_eval.sh folder (no kv/geometry.json)")
    if a.run_only:
        if run is None:
            sys.exit(f"plot_eval: no msa eval results in {run_dir}")
        runs = [run]
    else:
        if os.path.exists(a.doc_sinks):
            top16, ds = load_doc_sinks(a.doc_sinks)
            run = run or top16
        runs = [r for r in (run,) if r]
        if os.path.exists(a.one_m):
            runs.append(load_one_m(a.one_m))
        else:
            print(f"plot_eval: {a.one_m} missing: the 1M run left out", file=sys.stderr)
    if not runs:
        sys.exit("plot_eval: no real K/V results found")
    fig_mass(runs, a.out, made)
    fig_needles(runs, a.out, made)
    fig_error(runs, a.out, made)
    fig_per_head(run, None if a.run_only else a.retrieve, a.out, made)
    if a.run_only:
        return 0
    if ds:
        fig_doc_sinks(ds, a.doc_sinks, a.out, made)
    synth = parse_synthetic(a.benchmarks) if os.path.exists(a.benchmarks) else None
    if synth and synth["rows"]:
        fig_vs_synthetic(synth, runs, a.out, made)
    else:
        print(f"plot_eval: no synthetic-suite table (\"{SYNTH_HEADING}\") in {a.benchmarks}: "
              "realkv_vs_synthetic.png skipped", file=sys.stderr)
    return 0


plt = None

if __name__ == "__main__":
    sys.exit(main())
