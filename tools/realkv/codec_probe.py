#!/usr/bin/env python3
"""How many bits real K/V need: the codec goal of issue 5 against real data.

Reads an export folder of export.py (the K/V .npy files: export without
--ingest, or with --keep) and asks, per stream (store layer, KV head):

  1. spectrum: the coding gain a transform could bring, 0.5 log2(AM/GM) of
     the covariance's eigenvalues (a per-stream rotation, KLT) and of the
     per-channel variances (per-channel bit allocation without rotation);
  2. bound: the bits per value a Gaussian source of the stream's value
     covariance and mean needs so that one token's value (the output of a
     query peaked on it) has relative error eps (reverse water-filling);
  3. schemes: the attention error of scalar quantisers applied to keys only,
     values only, or both, measured as msa_bench_codec measures it:
     eps = ||o_q - o|| / ||o|| per (query, stream), exact attention in
     float64 over the f16 block oracle's top-64 blocks + first + last, with
     the model's own queries (queries_l<j>.npy, 3 query heads per KV head).
     Bits per element count the codes and fp16 (scale, min) pairs.

Schemes: kc<b>  keys per channel over a 64-token block, b bits;
         vt<b>  values per token over all channels, b bits;
         vh<b>  values rotated by a fixed random-sign Hadamard matrix first
                (spreads outlier channels over all; the rotation is undone
                after decoding), then per token, b bits.

  tools/realkv/.venv/bin/python tools/realkv/codec_probe.py OUT/kv [--layers 1,3] [--eps 0.01]
"""
import argparse
import glob
import json
import os

import numpy as np

BLOCK = 64


def streams(kv, j):
    docs = sorted(glob.glob(os.path.join(kv, "doc_*_keys.npy")),
                  key=lambda p: int(os.path.basename(p).split("_")[1]))
    if not docs:
        raise SystemExit(f"codec_probe: no doc_*_keys.npy in {kv} (export.py without --ingest, or --keep)")
    k = np.concatenate([np.load(p)[j] for p in docs], axis=1).astype(np.float32)
    v = np.concatenate([np.load(p.replace("_keys", "_values"))[j] for p in docs], axis=1).astype(np.float32)
    return k, v  # [kv_heads, T, d]


def coding_gain(x):
    x = x.astype(np.float64) - x.mean(0)
    lam = np.clip(np.linalg.eigvalsh(np.cov(x.T)), 1e-12, None)
    var = np.clip(x.var(0), 1e-12, None)
    flat = lambda a: 0.5 * np.log2(a.mean() / np.exp(np.log(a).mean()))
    return flat(lam), flat(var)


def gaussian_value_bits(v, eps):
    x = v.astype(np.float64)
    mu = x.mean(0)
    lam = np.clip(np.linalg.eigvalsh(np.cov((x - mu).T)), 1e-12, None)
    target = eps ** 2 * (lam.mean() + mu @ mu / len(mu))  # per-element MSE for relative error eps
    lo, hi = 0.0, lam.max()
    for _ in range(100):  # water level theta: mean(min(theta, lam)) = target
        theta = (lo + hi) / 2
        lo, hi = (theta, hi) if np.mean(np.minimum(theta, lam)) < target else (lo, theta)
    return np.mean(np.maximum(0.0, 0.5 * np.log2(lam / theta)))


def quantise(x, lo, hi, bits):
    levels = 2 ** bits - 1
    step = np.where(hi > lo, (hi - lo) / levels, 1.0)
    return lo + np.clip(np.rint((x - lo) / step), 0, levels) * step


def keys_per_channel(x, bits):
    out = np.empty_like(x)
    for t in range(0, len(x), BLOCK):
        b = x[t:t + BLOCK]
        out[t:t + BLOCK] = quantise(b, b.min(0), b.max(0), bits)
    return out, bits + 32.0 / BLOCK


def values_per_token(x, bits):
    return quantise(x, x.min(1, keepdims=True), x.max(1, keepdims=True), bits), bits + 32.0 / x.shape[1]


def hadamard(d, seed=7):
    h = np.array([[1.0]])
    while len(h) < d:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(d) * np.random.default_rng(seed).choice([-1.0, 1.0], d)[None, :]


def values_rotated(x, bits):
    r = hadamard(x.shape[1])
    y, b = values_per_token((x @ r).astype(np.float32), bits)
    return (y @ r.T).astype(np.float32), b


def scheme(name):
    """'kc4+vh6' -> (key quantiser or None, value quantiser or None)."""
    fk = fv = None
    for part in name.split("+"):
        kind, bits = part[:2], int(part[2:])
        if kind == "kc":
            fk = lambda x, b=bits: keys_per_channel(x, b)
        elif kind == "vt":
            fv = lambda x, b=bits: values_per_token(x, b)
        elif kind == "vh":
            fv = lambda x, b=bits: values_rotated(x, b)
        else:
            raise SystemExit(f"codec_probe: unknown scheme part {part!r} (kc<b>, vt<b>, vh<b>)")
    return fk, fv


def attend(q, k, v, idx):
    s = k[idx] @ q / np.sqrt(k.shape[1])
    p = np.exp(s - s.max())
    return (p / p.sum()) @ v[idx]


def oracle(q, k, top_k=64):
    s = k @ q / np.sqrt(k.shape[1])
    mass = np.add.reduceat(np.exp(s - s.max()), np.arange(0, len(k), BLOCK))
    blocks = sorted(set(np.argsort(-mass)[:top_k].tolist()) | {0, len(mass) - 1})
    return np.concatenate([np.arange(b * BLOCK, min(len(k), (b + 1) * BLOCK)) for b in blocks])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kv", help="export.py's output folder with the K/V files")
    ap.add_argument("--layers", default="all", help="store layers, comma-separated (default all)")
    ap.add_argument("--eps", type=float, default=0.01, help="relative error for the Gaussian bound")
    ap.add_argument("--schemes", default="kc8+vt8,kc8,vt8,kc4,kc5,kc6,vt6,vh6,vh7,kc6+vh6,kc6+vh7")
    a = ap.parse_args()
    geometry = json.load(open(os.path.join(a.kv, "geometry.json")))
    layers = range(geometry["layers"]) if a.layers == "all" else [int(x) for x in a.layers.split(",")]
    group = geometry["q_heads"] // geometry["kv_heads"]
    data = []
    print("layer kv_head | KLT gain K, V (bits) | per-channel gain K, V | Gaussian value bits at eps")
    for j in layers:
        k, v = streams(a.kv, j)
        q = np.load(os.path.join(a.kv, f"queries_l{j}.npy")).astype(np.float64)
        for h in range(k.shape[0]):
            gk, dk = coding_gain(k[h])
            gv, dv = coding_gain(v[h])
            print(f"{j:5d} {h:7d} | {gk:5.2f} {gv:5.2f} | {dk:5.2f} {dv:5.2f} | "
                  f"{gaussian_value_bits(v[h], a.eps):5.2f}", flush=True)
            qs = [q[i, g] for i in range(len(q)) for g in range(h * group, (h + 1) * group)]
            data.append((k[h], v[h], qs, [oracle(x, k[h]) for x in qs]))
    print()
    print("scheme       | bits K  bits V  ratio | eps mean   p99      max      (n)")
    for name in a.schemes.split(","):
        fk, fv = scheme(name)
        eps, bk, bv = [], 16.0, 16.0
        for k, v, qs, idxs in data:
            kq, bk = fk(k) if fk else (k, 16.0)
            vq, bv = fv(v) if fv else (v, 16.0)
            for x, idx in zip(qs, idxs):
                ref = attend(x, k, v, idx)
                eps.append(np.linalg.norm(attend(x, kq, vq, idx) - ref) / np.linalg.norm(ref))
        print(f"{name:12s} | {bk:6.2f} {bv:6.2f} {32 / (bk + bv):6.2f} | {np.mean(eps):.2e} "
              f"{np.percentile(eps, 99):.2e} {np.max(eps):.2e} ({len(eps)})", flush=True)


if __name__ == "__main__":
    main()
