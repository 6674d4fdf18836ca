"""The passkey task with memory attention inside the model's layers (issue 9).

    python retrieve.py --run OUT --store STORE [--modes none,dense,msa,msa-docsinks]
                       [--layers all] [--top-k 16] [--tokens 6] [--queries 0-31] [--json FILE]

OUT: a run_eval.sh folder (corpus.json, kv/ with queries.json, and the K/V
.npy files of every document in kvkeep/ or kv/); STORE: the msa store built
from the same documents (run_eval.sh's OUT/store, or a copy of it).

For each passkey query ("... The pass key of the LABEL is") the model runs
over the prompt from position query_position (as export.py places queries:
after a full-length document, so every memory key is at a positive distance)
and greedy-decodes --tokens tokens. In every memory layer (--layers) each
token's attention is its own causal attention over the prompt (and the
tokens decoded so far), merged through the log-sum-exp with attention over
that layer's memory for the same query head (GQA: query head h reads KV
head h // 3, as the model and msa both do; scores scaled by 1/sqrt(64), which
is also msa's scale):

  none          no memory (the model alone)
  dense         exact attention over every memory token (fp16 K/V from the
                .npy files, computed in float32)
  msa           msa's sparse attention (Store.attend, --top-k routed blocks
                per KV head + the stream's sink and recent block)
  msa-docsinks  the same with document_sinks: also every document's first block
  dense-onesink dense without the other documents' first tokens: only the
                stream's first token stays as a sink (a control: is the memory
                usable once the 27 extra sinks are gone?)
  dense-owndoc  dense over the passkey's own document only (a check of this
                pipeline: export.py's in-context answers, with fp16 K/V)
  dense-docs:N  dense over the passkey's document and the N - 1 documents after it
                in the corpus (wrapping): how fast distractor documents hurt
msa and msa-docsinks take a top-k of their own as msa:K / msa-docsinks:K
(e.g. msa:43 for about the blocks msa-docsinks reads at top-k 16).

A hit: the decoded text, stripped, starts with the passkey (as export.py's
--answers). For the msa modes it also records, per layer, whether the blocks
holding the passkey's digits are among those msa chose for the last prompt
token (the query that predicts the first digit), per KV head: the chosen
blocks come from `msa query --explain` over the same query rows (the same
routing; its output is checked against the one the model used).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
MODES = ("none", "dense", "dense-onesink", "dense-owndoc", "dense-docs", "msa", "msa-docsinks")


def merge_attention(o1, lse1, o2, lse2):
    """Two softmax attentions over disjoint key sets merged into the one over their union.

    o1, o2: [..., d] each normalised over its own keys; lse1, lse2: [...] the
    natural log of each softmax denominator (-inf: no keys). Weights
    exp(lse_i - lse) with lse = logaddexp(lse1, lse2)."""
    lse1 = np.asarray(lse1, dtype=np.float64)
    lse2 = np.asarray(lse2, dtype=np.float64)
    m = np.maximum(lse1, lse2)
    m = np.where(np.isfinite(m), m, 0.0)  # both empty: weights 0, out 0
    w1, w2 = np.exp(lse1 - m), np.exp(lse2 - m)
    den = w1 + w2
    safe = np.where(den > 0, den, 1.0)
    o = (w1[..., None] * o1 + w2[..., None] * o2) / safe[..., None]
    lse = np.where(den > 0, m + np.log(safe), -np.inf)
    return o.astype(np.float32), lse.astype(np.float32)


def attention_lse(q, k, v, causal_from=None):
    """Softmax attention with its log-sum-exp. q [T, Hq, d]; k, v [N, Hkv, d].

    Query head h reads KV head h // (Hq // Hkv); scores q.k / sqrt(d).
    causal_from: None (every key visible) or P: query t sees keys 0 .. P + t
    (the first P keys precede every query, as a cached prefix).
    Returns out [T, Hq, d] float32 and lse [T, Hq] float32."""
    t, hq, d = q.shape
    n, hkv = k.shape[0], k.shape[1]
    g = hq // hkv
    qh = q.reshape(t, hkv, g, d).transpose(1, 2, 0, 3).astype(np.float32)  # [Hkv, g, T, d]
    s = np.matmul(qh.reshape(hkv, g * t, d), k.transpose(1, 2, 0).astype(np.float32))  # [Hkv, g*T, N]
    s = s.reshape(hkv, g, t, n) * np.float32(1.0 / np.sqrt(d))
    if causal_from is not None:
        mask = np.arange(n)[None, :] > causal_from + np.arange(t)[:, None]
        s[:, :, mask] = -np.inf
    mx = s.max(axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.exp(s - mx)
    den = e.sum(axis=-1, keepdims=True)
    o = np.matmul((e / np.where(den > 0, den, 1.0)).reshape(hkv, g * t, n),
                  v.transpose(1, 0, 2).astype(np.float32)).reshape(hkv, g, t, d)
    lse = np.where(den[..., 0] > 0, np.log(np.where(den[..., 0] > 0, den[..., 0], 1.0)) + mx[..., 0], -np.inf)
    return o.transpose(2, 0, 1, 3).reshape(t, hq, d), lse.transpose(2, 0, 1).reshape(t, hq).astype(np.float32)


class DenseMemory:
    """Every memory token of every layer, fp16 as exported, documents in corpus order."""

    def __init__(self, kvdir, docs, layers, drop_document_sinks=False):
        """docs: corpus documents in stream order; drop_document_sinks: leave out
        every document's first token but the stream's first."""
        self.k, self.v = {}, {}
        keep = None
        if drop_document_sinks:  # every document's first token but the stream's first
            keep = np.ones(sum(d["tokens"] for d in docs), dtype=bool)
            keep[np.cumsum([d["tokens"] for d in docs])[:-1]] = False
        ks = [np.load(os.path.join(kvdir, f"{d['name']}_keys.npy"), mmap_mode="r") for d in docs]
        vs = [np.load(os.path.join(kvdir, f"{d['name']}_values.npy"), mmap_mode="r") for d in docs]
        for j in layers:  # [T, kv, d] float32
            self.k[j] = np.ascontiguousarray(np.concatenate([a[j] for a in ks], axis=1).transpose(1, 0, 2), np.float32)
            self.v[j] = np.ascontiguousarray(np.concatenate([a[j] for a in vs], axis=1).transpose(1, 0, 2), np.float32)
            if keep is not None:
                self.k[j], self.v[j] = self.k[j][keep], self.v[j][keep]

    def attend(self, layer, q):
        return attention_lse(q, self.k[layer], self.v[layer])


class MsaMemory:
    def __init__(self, store, top_k, document_sinks):
        self.store, self.top_k, self.document_sinks = store, top_k, document_sinks

    def attend(self, layer, q):
        return self.store.attend(layer, np.ascontiguousarray(q, np.float32), top_k=self.top_k, gpu="off",
                                 document_sinks=self.document_sinks)


class Runner:
    """The model's forward pass (model.py's numpy one) with a K/V cache of the
    prompt and memory attention merged in the chosen layers."""

    def __init__(self, m, memory, mem_layers):
        self.m, self.memory, self.mem_layers = m, memory, set(mem_layers)

    def run(self, ids, pos0, cache, record=None):
        """Runs ids at positions pos0..; cache: {layer: (k, v)} extended in place.
        record: dict to receive {layer: (q of the last token, memory out of the last token)}.
        Returns the last token's logits."""
        import model as M

        m, cfg = self.m, self.m.cfg
        t = len(ids)
        x = m.embed[np.asarray(ids, dtype=np.int64)].astype(np.float32)
        cos, sin = M.rope_tables(cfg, np.arange(pos0, pos0 + t))
        for i, L in enumerate(m.layers):
            h = M.rms_norm(x, L.attn_norm, cfg.rms_eps)
            q = M.apply_rope((h @ L.wq).reshape(t, cfg.q_heads, cfg.head_dim), cos, sin, m.layout)
            k = M.apply_rope((h @ L.wk).reshape(t, cfg.kv_heads, cfg.head_dim), cos, sin, m.layout)
            v = (h @ L.wv).reshape(t, cfg.kv_heads, cfg.head_dim)
            if i in cache:
                k, v = np.concatenate([cache[i][0], k]), np.concatenate([cache[i][1], v])
            cache[i] = (k, v)
            o, lse = attention_lse(q, k, v, causal_from=k.shape[0] - t)
            if self.memory is not None and i in self.mem_layers:
                om, lm = self.memory.attend(i, q)
                o, lse = merge_attention(o, lse, om, lm)
                if record is not None:
                    record[i] = (q[-1].copy(), om[-1].copy())
            x = x + o.reshape(t, -1) @ L.wo
            h = M.rms_norm(x, L.ffn_norm, cfg.rms_eps)
            gate = h @ L.wg
            x = x + ((gate / (1.0 + np.exp(-gate))) * (h @ L.wu)) @ L.wd
        return M.rms_norm(x[-1:], m.out_norm, cfg.rms_eps) @ m.lm_head.T

    def greedy(self, ids, pos0, n, record=None):
        cache = {}
        out = []
        logits = self.run(ids, pos0, cache, record)
        for step in range(n):
            out.append(int(np.argmax(logits[-1])))
            if step + 1 < n:
                logits = self.run([out[-1]], pos0 + len(ids) + step, cache)
        return out


def parse_list(spec, n):
    if spec in ("all", ""):
        return list(range(n))
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    if any(not 0 <= x < n for x in out):
        raise ValueError(f"{spec!r}: values must be in 0..{n - 1}")
    return sorted(set(out))


def explain_hits(msa_bin, store, layer, q_rows, top_k, document_sinks, needle_blocks, mem_out):
    """Per (row, KV head): are all of the row's needle blocks among those msa chose?
    Runs `msa query --explain --json` over q_rows [n, q_heads, d]; checks that its
    output equals mem_out (the memory attention the model used) to 1e-5."""
    with tempfile.TemporaryDirectory() as tmp:
        qf, of = os.path.join(tmp, "q.npy"), os.path.join(tmp, "o.npy")
        np.save(qf, np.ascontiguousarray(q_rows, np.float32))
        cmd = [msa_bin, "query", store, "--layer", str(layer), "--queries", qf, "--out", of, "--top-k", str(top_k),
               "--explain", "--json"] + (["--document-sinks"] if document_sinks else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
        j = json.loads(r.stdout)
        o = np.load(of)
    err = float(np.abs(o - mem_out).max())
    if err > 1e-5:
        raise AssertionError(f"layer {layer}: msa query's output differs from the model's memory attention by {err}")
    hits = np.zeros((q_rows.shape[0], len({e['kv_head'] for e in j['explain']})), dtype=bool)
    chosen_n = []
    for e in j["explain"]:
        chosen = {b["block"] for b in e["blocks"]}
        chosen_n.append(len(chosen))
        hits[e["row"], e["kv_head"]] = set(needle_blocks[e["row"]]) <= chosen
    return hits, float(np.mean(chosen_n))


def summarize(results) -> str:
    """The markdown tables of a results JSON: answers per mode, and per layer
    how often the passkey's block was chosen for the last prompt token."""
    n = len(results["queries"])
    lines = ["| memory | top-k | blocks per KV head (mean over layers) | passkey answers |", "|---|---:|---:|---:|"]
    for mode, r in results["modes"].items():
        pl = r.get("passkey_block_chosen")
        blocks = f"{np.mean([v['blocks_per_kv_head'] for v in pl.values()]):.1f}" if pl else "-"
        lines.append(f"| {mode} | {r.get('top_k', '-')} | {blocks} | {r['hits']} / {n} |")
    msa_modes = [m for m, r in results["modes"].items() if "passkey_block_chosen" in r]
    if msa_modes:
        lines += ["", "| layer | " + " | ".join(f"{m}: queries / (query, KV head)" for m in msa_modes) + " |",
                  "|---:|" + "---|" * len(msa_modes)]
        tot = {m: [0, 0, 0] for m in msa_modes}
        for j in results["layers"]:
            cells = []
            for m in msa_modes:
                v = results["modes"][m]["passkey_block_chosen"][str(j)]
                cells.append(f"{v['rows_any_kv_head']}/{n} / {v['row_kv_head']}/{v['row_kv_head_total']}")
                tot[m][0] += v["rows_any_kv_head"]
                tot[m][1] += v["row_kv_head"]
                tot[m][2] += v["row_kv_head_total"]
            lines.append(f"| {j} | " + " | ".join(cells) + " |")
        lines.append("| all | " + " | ".join(f"{tot[m][0]}/{n * len(results['layers'])} / {tot[m][1]}/{tot[m][2]}"
                                              for m in msa_modes) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run_eval.sh folder (corpus.json, kv/)")
    ap.add_argument("--store", required=True, help="the msa store of the same documents")
    ap.add_argument("--kv", default=None, help="folder of doc_<i>_keys/values.npy (default RUN/kvkeep, else RUN/kv)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"any of {', '.join(MODES)}")
    ap.add_argument("--layers", default="all", help="layers whose attention includes the memory (e.g. 12-29)")
    ap.add_argument("--top-k", type=int, default=16, help="msa routed blocks per KV head (run_eval's default)")
    ap.add_argument("--tokens", type=int, default=6, help="greedy tokens per query")
    ap.add_argument("--queries", default="all", help="query rows, e.g. 0-7")
    ap.add_argument("--msa", default=os.path.join(HERE, "..", "..", "build", "msa"), help="msa binary (--explain)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--summary", metavar="JSON", help="print the tables of an earlier --json and exit")
    if argv is None and "--summary" in sys.argv:  # --run/--store are not needed then
        argv = sys.argv[1:]
        i = argv.index("--summary")
        print(summarize(json.load(open(argv[i + 1]))))
        return None
    a = ap.parse_args(argv)
    modes = a.modes.split(",")
    top_k_of = {}
    for x in modes:
        name, _, k = x.partition(":")
        if name not in MODES or (k and (not (name.startswith("msa") or name == "dense-docs") or not k.isdigit())) \
                or (name == "dense-docs" and not k):
            ap.error(f"--modes: {x!r} is not one of {', '.join(MODES)} (msa modes may add :TOP_K; dense-docs:N)")
        top_k_of[x] = int(k) if k else a.top_k

    import model as M

    corpus = json.load(open(os.path.join(a.run, "corpus.json")))
    qmeta = json.load(open(os.path.join(a.run, "kv", "queries.json")))
    geo = json.load(open(os.path.join(a.run, "kv", "geometry.json")))
    if geo["model_layers"] != list(range(30)):
        raise ValueError("the store must hold every model layer (store layer j = model layer j)")
    kvdir = a.kv or (os.path.join(a.run, "kvkeep") if os.path.isdir(os.path.join(a.run, "kvkeep"))
                     else os.path.join(a.run, "kv"))
    docs = corpus["documents"][: geo["docs"]]
    tok = M.Tokenizer()
    m = M.load_model()
    layers = parse_list(a.layers, m.cfg.layers)
    rows = parse_list(a.queries, len(qmeta))
    qpos = geo["query_position"]
    pk = {p["id"]: p for p in corpus["passkeys"]}

    sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
    import msa

    store = msa.Store.open(a.store, read_only=True)
    first_block = {d.name: d.first_block for d in store.documents()}
    bt = store.geometry.block_tokens
    needle_blocks = []  # per row: the blocks holding the passkey's digits
    for r in rows:
        p = pk[qmeta[r]["passkey"]]
        o0, o1 = p["digits_token_offset"], p["digits_token_offset"] + p["digits_tokens"] - 1
        needle_blocks.append(list(range(first_block[p["doc"]] + o0 // bt, first_block[p["doc"]] + o1 // bt + 1)))

    dense = DenseMemory(kvdir, docs, layers) if "dense" in modes else None
    dense1 = DenseMemory(kvdir, docs, layers, drop_document_sinks=True) if "dense-onesink" in modes else None
    results = {"run": os.path.abspath(a.run), "store": os.path.abspath(a.store), "layers": layers,
               "top_k": a.top_k, "tokens": a.tokens, "queries": rows, "query_position": qpos, "modes": {}}
    for mode in modes:
        name, top_k = mode.partition(":")[0], top_k_of[mode]
        doc_sinks = name == "msa-docsinks"
        memory = {"none": None, "dense": dense, "dense-onesink": dense1, "dense-owndoc": None, "dense-docs": None,
                  "msa": MsaMemory(store, top_k, False), "msa-docsinks": MsaMemory(store, top_k, True)}[name]
        runner = Runner(m, memory, layers)
        t0 = time.time()
        answers, last_q, last_om = [], {j: [] for j in layers}, {j: [] for j in layers}
        for r in rows:
            rec = {}
            if name in ("dense-owndoc", "dense-docs"):
                at = [i for i, d in enumerate(docs) if d["name"] == pk[qmeta[r]["passkey"]]["doc"]][0]
                n_docs = top_k if name == "dense-docs" else 1
                runner.memory = DenseMemory(kvdir, [docs[(at + i) % len(docs)] for i in range(n_docs)], layers)
            out = runner.greedy(qmeta[r]["ids"], qpos, a.tokens, rec)
            text = tok.decode(out)
            key = pk[qmeta[r]["passkey"]]["key"]
            answers.append({"query": r, "passkey": key, "answer": text, "hit": text.strip().startswith(key)})
            for j in rec:
                last_q[j].append(rec[j][0])
                last_om[j].append(rec[j][1])
            print(f"{mode} q{r}: {text!r} (passkey {key}) {'HIT' if answers[-1]['hit'] else 'miss'}", flush=True)
        res = {"answers": answers, "hits": sum(x["hit"] for x in answers), "seconds": time.time() - t0}
        if name.startswith("msa"):
            res.update(top_k=top_k, document_sinks=doc_sinks)
            per_layer = {}
            for j in layers:
                hits, chosen = explain_hits(a.msa, a.store, j, np.stack(last_q[j]), top_k, doc_sinks,
                                            needle_blocks, np.stack(last_om[j]))
                per_layer[str(j)] = {"rows_any_kv_head": int(hits.any(axis=1).sum()), "row_kv_head": int(hits.sum()),
                                "row_kv_head_total": int(hits.size), "blocks_per_kv_head": chosen,
                                "per_kv_head": hits.sum(axis=0).tolist()}
            res["passkey_block_chosen"] = per_layer
        results["modes"][mode] = res
        print(f"{mode}: {res['hits']} / {len(rows)} answers are the passkey ({res['seconds']:.0f} s)", flush=True)
        if a.json:  # after every mode: a long run stopped part way keeps what it finished
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
    store.close()
    print(summarize(results))
    return results


if __name__ == "__main__":
    main()
