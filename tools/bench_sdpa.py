#!/usr/bin/env python3
"""Time torch SDPA on the shapes of tools/bench_cuda_attention.cu (random data).

q [1, 32, n, 128] fp16, k/v [1, 8, budget, 128] fp16, GQA 4. Prints CSV
n,budget,sdpa_us,sdpa_us_backtoback,sdpa_us_cold with notes as '#' lines:
sdpa_us the median of 50 single calls after warm-up (L2-warm where K/V fit the
50 MiB L2), back-to-back 50 calls / 50, cold the median of 50 single calls each
after writing a 256 MiB buffer (K/V evicted from L2) -- the same columns as
tools/bench_cuda_attention.cu.

Optional: --budgets 4096 --ns 1,8 (comma lists) replace the default shapes,
e.g. to set SDPA beside tools/bench_gpu_attend.cc's one-layer attend.
"""
import argparse
import inspect
import statistics

import torch
import torch.nn.functional as F

_ap = argparse.ArgumentParser()
_ap.add_argument("--budgets", default="2048,8192,32768")
_ap.add_argument("--ns", default="1,8,64")
_args = _ap.parse_args()
BUDGETS = [int(x) for x in _args.budgets.split(",")]
NS = [int(x) for x in _args.ns.split(",")]
dev = "cuda"
print(f"# torch {torch.__version__}, cuda {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
try:
    from torch.nn.attention import sdpa_kernel, SDPBackend
except ImportError:
    sdpa_kernel = None


def run(q, k, v, gqa):
    if gqa:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v)


def time_fn(fn, warmup=10, iters=50):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(iters):
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1e3)
    return statistics.median(ts)


_flush = None


def time_cold(fn, iters=50):
    # each call after a 256 MiB write that evicts K/V from the 50 MiB L2
    global _flush
    if _flush is None:
        _flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    ts = []
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for i in range(iters):
        _flush.fill_(i & 0xFF)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1e3)
    return statistics.median(ts)


def time_batched(fn, iters=50):
    # back-to-back launches between two events: hides host dispatch gaps
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) * 1e3 / iters


print("n,budget,sdpa_us,sdpa_us_backtoback,sdpa_us_cold")
torch.manual_seed(0)
for budget in BUDGETS:
    k = torch.randn(1, 8, budget, 128, device=dev, dtype=torch.float16)
    v = torch.randn_like(k)
    for n in NS:
        q = torch.randn(1, 32, n, 128, device=dev, dtype=torch.float16)
        note = []
        # GQA: enable_gqa if accepted, else repeat_interleave K/V to 32 heads.
        kk, vv, gqa = k, v, True
        try:
            run(q, k, v, True)
        except TypeError:
            kk, vv, gqa = k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1), False
            note.append("repeat_interleave")
        fn = lambda: run(q, kk, vv, gqa)
        backend = "flash"
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                fn()
                us = time_fn(fn)
                bb = time_batched(fn)
                cold = time_cold(fn)
        except RuntimeError as ex:
            bb = cold = float("nan")
            if gqa:
                # flash may refuse enable_gqa; try flash with repeated K/V first
                kr, vr = k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1)
                try:
                    fr = lambda: F.scaled_dot_product_attention(q, kr, vr)
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        fr()
                        us = time_fn(fr)
                    note.append("flash refused enable_gqa -> flash+repeat_interleave")
                except RuntimeError:
                    us = time_fn(fn)
                    backend = "default"
                    note.append("flash refused -> default backend")
            else:
                us = time_fn(fn)
                backend = "default"
                note.append("flash refused -> default backend")
        if note:
            print(f"# n={n} budget={budget}: {'; '.join(note)}")
        print(f"{n},{budget},{us:.2f},{bb:.2f},{cold:.2f}")
