"""Per-layer tables (markdown) of the msa eval results of a run_eval.sh folder.

    python summarize.py OUT        # reads OUT/kv/geometry.json, OUT/eval/layer_*.json
    python summarize.py --compact OUT   # one row per layer, both query sets side by side
    python summarize.py --per-head OUT  # needle hits per KV head (per_head_eval.sh)

One table per query set present: the no-memory queries (eval/layer_J.json)
and the queries formed with the passkey's document in context
(eval/layer_J_doc.json); then the greedy answers if export.py ran with --answers.
"""
from __future__ import annotations

import json
import os
import sys

SETS = [("", "queries from the prompt alone (no memory): `queries_l<j>.npy`"),
        ("_doc", "queries formed with the passkey's own document in context (dense): `queries_doc_l<j>.npy`")]


def table(out, geo, suffix):
    rows = []
    for j, L in enumerate(geo["model_layers"]):
        p = os.path.join(out, "eval", f"layer_{j}{suffix}.json")
        if os.path.exists(p):
            rows.append((j, L, json.load(open(p))))
    if not rows:
        return None
    lines = ["| layer | mass recall mean | p5 | p1 | oracle blocks mean | oracle tokens mean | out err mean | p95 "
             "| block recall@k | needle hits |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    tot_hits = tot_needles = 0
    for j, L, e in rows:
        hits = round(e["needle_hit_rate"] * e["needles"])
        tot_hits += hits
        tot_needles += e["needles"]
        m, o, err = e["mass_recall"], e["oracle_block_mass_recall"], e["output_error"]
        lines.append(f"| {L} | {m['mean']:.4f} | {m['p5']:.4f} | {m['p1']:.4f} | {o['mean']:.4f} | "
                     f"{e['oracle_token_mass_recall']['mean']:.4f} | {err['mean']:.4f} | {err['p95']:.4f} | "
                     f"{e['block_recall']:.4f} | {hits} / {e['needles']} |")
    mean = lambda k, s: sum(e[k][s] for _, _, e in rows) / len(rows)  # noqa: E731
    lines.append(f"| all | {mean('mass_recall', 'mean'):.4f} | | | {mean('oracle_block_mass_recall', 'mean'):.4f} | | "
                 f"{mean('output_error', 'mean'):.4f} | | {sum(e['block_recall'] for _, _, e in rows) / len(rows):.4f} "
                 f"| {tot_hits} / {tot_needles} |")
    return rows, lines


def compact(out, geo):
    """One row per layer, both query sets side by side."""
    print("| layer | mass recall mean / p5 / p1 | block-oracle mass mean / p5 | token-oracle mass mean | "
          "output error mean / p95 | block recall@k | needle hits | in-context q: mass mean / p5 | "
          "in-context q: needle hits |")
    print("|---:|---|---|---:|---|---:|---:|---|---:|")
    tot = [0, 0, 0, 0]
    for j, L in enumerate(geo["model_layers"]):
        p0 = os.path.join(out, "eval", f"layer_{j}.json")
        p1 = os.path.join(out, "eval", f"layer_{j}_doc.json")
        if not os.path.exists(p0):
            continue
        e = json.load(open(p0))
        d = json.load(open(p1)) if os.path.exists(p1) else None
        h0 = round(e["needle_hit_rate"] * e["needles"])
        tot[0] += h0
        tot[1] += e["needles"]
        m, o, err = e["mass_recall"], e["oracle_block_mass_recall"], e["output_error"]
        row = (f"| {L} | {m['mean']:.3f} / {m['p5']:.3f} / {m['p1']:.3f} | {o['mean']:.3f} / {o['p5']:.3f} | "
               f"{e['oracle_token_mass_recall']['mean']:.3f} | {err['mean']:.3f} / {err['p95']:.3f} | "
               f"{e['block_recall']:.3f} | {h0}/{e['needles']} |")
        if d:
            h1 = round(d["needle_hit_rate"] * d["needles"])
            tot[2] += h1
            tot[3] += d["needles"]
            row += f" {d['mass_recall']['mean']:.3f} / {d['mass_recall']['p5']:.3f} | {h1}/{d['needles']} |"
        else:
            row += " | |"
        print(row)
    print(f"| all | | | | | | {tot[0]}/{tot[1]} | | {tot[2]}/{tot[3]} |")


def per_head(out, geo):
    """Needle hits per KV head (per_head_eval.sh), both query sets."""
    kv = geo["kv_heads"]
    print("| layer | " + " | ".join(f"KV head {g}" for g in range(kv)) + " | "
          + " | ".join(f"in-context q: KV head {g}" for g in range(kv)) + " |")
    print("|---:|" + "---:|" * (2 * kv))
    for j, L in enumerate(geo["model_layers"]):
        cells = []
        for suffix in ("", "_doc"):
            for g in range(kv):
                p = os.path.join(out, "eval_head", f"layer_{j}{suffix}_kv{g}.json")
                if os.path.exists(p):
                    e = json.load(open(p))
                    cells.append(f"{round(e['needle_hit_rate'] * e['needles'])}/{e['needles']}")
                else:
                    cells.append("")
        if any(cells):
            print(f"| {L} | " + " | ".join(cells) + " |")


def main(argv=None):
    argv = argv if argv is not None else sys.argv[1:]
    if argv and argv[0] == "--per-head":
        per_head(argv[1], json.load(open(os.path.join(argv[1], "kv", "geometry.json"))))
        return 0
    if argv and argv[0] == "--compact":
        out = argv[1]
        compact(out, json.load(open(os.path.join(out, "kv", "geometry.json"))))
        return 0
    out = argv[0]
    geo = json.load(open(os.path.join(out, "kv", "geometry.json")))
    stats_path = os.path.join(out, "kv", "export_stats.json")
    stats = json.load(open(stats_path)) if os.path.exists(stats_path) else {}
    first = True
    for suffix, title in SETS:
        t = table(out, geo, suffix)
        if t is None:
            continue
        rows, lines = t
        if first:
            e0 = rows[0][2]
            print(f"SmolLM2-135M-Instruct (Q4_1 GGUF, sha256 {geo['model_sha256'][:16]}...), "
                  f"{geo['docs']} documents, {e0['tokens']} tokens per stream, {e0['blocks_per_stream']} blocks; "
                  f"{e0['queries']} queries x {e0['q_heads']} heads; top-k {e0['top_k']} (+ sink + recent) = "
                  f"{e0['avg_blocks_selected']:.1f} blocks per KV head ({100 * e0['fraction_of_tokens']:.2f}% of "
                  f"tokens); summary {e0['summary']}, GQA {e0['combine']}; needle = the passkey's 5 digit tokens, "
                  f"one per (query, KV head)")
            if stats:
                print(f"export: {stats['tokens']} tokens, {stats['layers']} layers, forward "
                      f"{stats['forward_s_per_1k_tokens']:.2f} s per 1K tokens ({stats['device']})")
            first = False
        print()
        print(f"{title}:")
        print()
        print("\n".join(lines))
    if first:
        print("no eval results")
        return 1
    qpath = os.path.join(out, "kv", "queries.json")
    if os.path.exists(qpath):
        qs = json.load(open(qpath))
        for key, what in (("hit_no_memory", "no memory"), ("hit_with_doc", "the passkey's document in context")):
            v = [q[key] for q in qs if key in q]
            if v:
                print(f"\ngreedy answer is the passkey, {what}: {sum(v)} / {len(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
