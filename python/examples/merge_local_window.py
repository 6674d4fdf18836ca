"""Merge msa's attention over a long memory with a model's local window.

A model keeps its most recent tokens' keys and values itself (the local
window) and the long past in an msa store. Each side computes attention over
its own tokens and returns the log-sum-exp (lse) of its scaled scores; the
two merge exactly into attention over both:

    lse = logaddexp(lse_memory, lse_local)
    out = exp(lse_memory - lse) * out_memory + exp(lse_local - lse) * out_local

This script checks the merge against dense attention over memory + window.
It uses exact mode so that the two must agree; a model would pass top_k=16
(the default) and get the merge of the routed blocks instead.

    python3 python/examples/merge_local_window.py
"""
import tempfile
from pathlib import Path

import numpy as np

import msa

LAYERS, KV_HEADS, HEAD_DIM = 1, 2, 64
Q_HEADS = 8  # GQA: query head h reads KV head h // (Q_HEADS // KV_HEADS)
MEMORY_TOKENS, WINDOW_TOKENS, QUERIES = 1000, 48, 3


def attention(q, keys, values):
    """Plain attention with its lse: q [n, q_heads, d], keys/values
    [kv_heads, tokens, d]; returns out [n, q_heads, d], lse [n, q_heads]."""
    group = q.shape[1] // keys.shape[0]
    k = np.repeat(keys, group, axis=0)  # [q_heads, tokens, d]
    v = np.repeat(values, group, axis=0)
    scores = np.einsum("nhd,htd->nht", q, k) / np.sqrt(q.shape[-1])
    lse = np.logaddexp.reduce(scores, axis=-1)
    return np.einsum("nht,htd->nhd", np.exp(scores - lse[..., None]), v), lse


def merge(out_a, lse_a, out_b, lse_b):
    """Attention over the union of two disjoint token sets, from each set's own."""
    lse = np.logaddexp(lse_a, lse_b)
    out = np.exp(lse_a - lse)[..., None] * out_a + np.exp(lse_b - lse)[..., None] * out_b
    return out, lse


def main():
    rng = np.random.default_rng(0)
    # The model's K/V, fp16 as models keep them: the long past and the window.
    memory_k, memory_v = (rng.standard_normal((LAYERS, KV_HEADS, MEMORY_TOKENS, HEAD_DIM))
                          .astype(np.float16) for _ in range(2))
    window_k, window_v = (rng.standard_normal((KV_HEADS, WINDOW_TOKENS, HEAD_DIM))
                          .astype(np.float16) for _ in range(2))
    q = rng.standard_normal((QUERIES, Q_HEADS, HEAD_DIM)).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        with msa.Store.create(Path(tmp) / "memory", layers=LAYERS, kv_heads=KV_HEADS,
                              head_dim=HEAD_DIM) as store:
            store.append_document("past", memory_k, memory_v)
            store.commit()
            out_memory, lse_memory = store.attend(0, q, exact=True)

    out_local, lse_local = attention(q.astype(np.float64), window_k.astype(np.float64),
                                     window_v.astype(np.float64))
    out, lse = merge(out_memory, lse_memory, out_local, lse_local)

    both_k = np.concatenate([memory_k[0], window_k], axis=1).astype(np.float64)
    both_v = np.concatenate([memory_v[0], window_v], axis=1).astype(np.float64)
    dense_out, dense_lse = attention(q.astype(np.float64), both_k, both_v)

    # msa computes in float32 over the fp16 values it stores bit-exact: the
    # merge agrees with float64 dense attention to float32 rounding.
    error = np.abs(out - dense_out).max()
    assert np.allclose(out, dense_out, rtol=0, atol=1e-5), error
    assert np.allclose(lse, dense_lse, rtol=0, atol=1e-5), np.abs(lse - dense_lse).max()
    print(f"memory ({MEMORY_TOKENS} tokens, msa) + local window ({WINDOW_TOKENS} tokens) "
          f"merged through the lse = dense attention over both: max error {error:.2e}")


if __name__ == "__main__":
    main()
