"""Where the dense attention of the real queries goes, per layer (needs the K files).

    python sinks.py KVDIR [--layers 0,5,...]

KVDIR: an export.py folder whose doc_<i>_keys.npy are kept (export without
--ingest, or with --keep; run_eval.sh with KEEP=1). For each store layer,
dense softmax of every query row and query head over all memory keys
(documents concatenated in corpus order, as msa stores them), and reports the
mean mass on
  - the stream's first token (msa's sink block covers it),
  - the other documents' first tokens (each document was run from position 0,
    so each has its own attention sink),
  - the passkey digits the query asks for (its own needle),
  - the same, for the query head that attends to it most (max over the 9 heads),
and, for that best head with the documents' first tokens set aside, how
often the needle's block (msa's 64-token blocks, which never straddle
documents) holds the most mass of all blocks, and its rank (median; 0 = top).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kvdir")
    ap.add_argument("--layers", default="", help="store layers (default: all)")
    ap.add_argument("--queries", choices=("none", "doc"), default="none",
                    help="query set: none = queries_l<j> (no memory), doc = queries_doc_l<j> (document in context)")
    ap.add_argument("--json", help="write the table here")
    a = ap.parse_args(argv)
    geo = json.load(open(os.path.join(a.kvdir, "geometry.json")))
    corpus = json.load(open(geo["corpus"]))
    docs = corpus["documents"][: geo["docs"]]
    qmeta = json.load(open(os.path.join(a.kvdir, "queries.json")))
    pk = {p["id"]: p for p in corpus["passkeys"]}
    lens = [d["tokens"] for d in docs]
    starts = np.cumsum([0] + lens[:-1])
    total = int(sum(lens))
    layers = [int(x) for x in a.layers.split(",")] if a.layers else list(range(geo["layers"]))
    group = geo["q_heads"] // geo["kv_heads"]
    scale = 1.0 / np.sqrt(geo["head_dim"])
    rows = []
    print("| layer (model) | stream token 0 | other docs' first tokens | own needle (mean head) | own needle (best head) "
          "| needle's block is the top block (best head, sinks aside) | its rank, median |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for j in layers:
        K = np.concatenate([np.load(os.path.join(a.kvdir, f"{d['name']}_keys.npy"), mmap_mode="r")[j]
                            .astype(np.float32) for d in docs], axis=1)  # [kv, T, d]
        q = np.load(os.path.join(a.kvdir, f"queries{'_doc' if a.queries == 'doc' else ''}_l{j}.npy"))
        s = np.einsum("nhd,htd->nht", q, np.repeat(K, group, axis=0)) * scale
        s -= s.max(-1, keepdims=True)
        w = np.exp(s)
        w /= w.sum(-1, keepdims=True)  # [n, heads, T]
        sink0 = float(w[:, :, 0].mean())
        others = float(w[:, :, starts[1:]].sum(-1).mean()) if len(starts) > 1 else 0.0
        own, best, top, ranks = [], [], 0, []
        nonsink = w.copy()
        nonsink[:, :, starts] = 0
        bstarts = np.concatenate([st + np.arange(0, n, 64) for st, n in zip(starts, lens)])  # msa's blocks
        for i, qm in enumerate(qmeta):
            p = pk[qm["passkey"]]
            if p["doc_index"] >= len(docs):
                continue
            span = slice(p["position"], p["position"] + p["digits_tokens"])
            m = w[i, :, span].sum(-1)  # per head
            own.append(m.mean())
            h = int(m.argmax())
            best.append(m[h])
            blocks = np.add.reduceat(nonsink[i, h], bstarts)
            b = int(np.searchsorted(bstarts, p["position"], side="right") - 1)
            rank = int((blocks > blocks[b]).sum())  # 0: the needle's block is the top block
            ranks.append(rank)
            top += int(rank == 0)
        r = {"layer": j, "model_layer": geo["model_layers"][j], "sink_stream_first": sink0,
             "other_doc_first_tokens": others, "needle_mass_mean_head": float(np.mean(own)),
             "needle_mass_best_head": float(np.mean(best)), "needle_top_block": top,
             "needle_block_rank_median": float(np.median(ranks)), "queries": len(own)}
        rows.append(r)
        print(f"| {j} ({r['model_layer']}) | {sink0:.3f} | {others:.3f} | {r['needle_mass_mean_head']:.4f} | "
              f"{r['needle_mass_best_head']:.4f} | {top} / {len(own)} | {r['needle_block_rank_median']:.0f} |",
              flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
