"""Dense attention in float64: the reference the tests hold msa to."""
import numpy as np


def dense_attention(q, keys, values):
    """q [n, q_heads, d]; keys/values [kv_heads, tokens, d] (one layer). Returns
    out [n, q_heads, d] and lse [n, q_heads] in float64; query head h reads KV
    head h // (q_heads // kv_heads), as msa does."""
    q = np.asarray(q, np.float64)
    k = np.asarray(keys, np.float64)
    v = np.asarray(values, np.float64)
    n, q_heads, d = q.shape
    group = q_heads // k.shape[0]
    kh = k[np.arange(q_heads) // group]  # [q_heads, tokens, d]
    vh = v[np.arange(q_heads) // group]
    s = np.einsum("nhd,htd->nht", q, kh) / np.sqrt(d)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    z = p.sum(axis=-1, keepdims=True)
    out = np.einsum("nht,htd->nhd", p / z, vh)
    lse = (m + np.log(z))[..., 0]
    return out, lse


def fp16(x):
    """What the f16 codec stores of float32 input: each element rounded to fp16."""
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float64)


def float32_tolerance(tokens, head_dim, scale):
    """A bound on float32 arithmetic's error in attention over `tokens` keys of
    `head_dim` channels with values (or scores) of magnitude `scale`: a few
    units of float32 rounding per accumulated term."""
    return 4 * np.finfo(np.float32).eps * (tokens + head_dim) * max(scale, 1.0)
