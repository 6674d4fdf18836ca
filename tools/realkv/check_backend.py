"""The torch backend (--device cpu|cuda) against the numpy forward pass, and export speed.

    python check_backend.py --device cuda [--tokens 2048] [--json out.json]

Compares logits and every layer's post-RoPE K, V and Q of the two backends on
the same 256 tokens (relative error, asserted < 1e-3), checks the torch
backend's greedy answer to "The capital of France is", and times a
whole-document K/V forward (all layers, --tokens tokens) on each backend:
seconds per 1K tokens. Exit 1 if a check fails; 2 if torch is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model as M  # noqa: E402


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="torch device: cpu or cuda")
    ap.add_argument("--tokens", type=int, default=2048, help="document length timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-numpy-timing", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch is not installed")
        return 2
    res = {"device": a.device, "torch": torch.__version__, "ok": True}
    if a.device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name(0)
    m = M.load_model()
    tok = M.Tokenizer()
    tm = M.make_runner(m, a.device)
    from check_model import PROSE, greedy

    path = "/usr/share/common-licenses/GPL-3"
    text = open(path).read() if os.path.exists(path) else PROSE * 40
    ids = tok.encode(text)
    while len(ids) < a.tokens:
        ids = ids + ids
    probe = ids[:256]
    r_np = m.forward(probe, want=("logits", "q", "k", "v"))
    r_t = tm.forward(probe, want=("logits", "q", "k", "v"))
    errs = {"logits": rel(r_t["logits"], r_np["logits"])}
    for name in ("q", "k", "v"):
        errs[name] = max(rel(r_t[name][L], r_np[name][L]) for L in range(m.cfg.layers))
    res["max_relative_error"] = errs
    ok_err = all(e < 1e-3 for e in errs.values())
    same_argmax = float(np.mean(r_t["logits"].argmax(-1) == r_np["logits"].argmax(-1)))
    res["same_argmax_fraction"] = same_argmax
    ans = greedy(tm, tok, "The capital of France is", 2)
    res["greedy_paris"] = ans
    res["ok"] = ok_err and ans.startswith(" Paris") and same_argmax > 0.99
    print(f"torch {torch.__version__} on {a.device}{' (' + res['gpu'] + ')' if 'gpu' in res else ''}: "
          f"relative error vs numpy {errs}, same argmax {same_argmax:.4f}, greedy {ans!r}", flush=True)

    doc = ids[: a.tokens]

    def timed(runner, sync=lambda: None):
        best = 1e30
        for _ in range(a.repeats):
            t0 = time.time()
            runner.forward(doc, want=("k", "v"))
            sync()
            best = min(best, time.time() - t0)
        return best

    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    tm.forward(doc[:128], want=("k", "v"))  # warm-up
    t_t = timed(tm, sync)
    res["torch_s_per_1k_tokens"] = 1000 * t_t / len(doc)
    print(f"torch {a.device}: {len(doc)}-token document, all {m.cfg.layers} layers' K/V: {t_t:.3f} s "
          f"({res['torch_s_per_1k_tokens']:.3f} s per 1K tokens, best of {a.repeats})", flush=True)
    if not a.skip_numpy_timing:
        t0 = time.time()
        m.forward(doc, want=("k", "v"))
        t_n = time.time() - t0
        res["numpy_s_per_1k_tokens"] = 1000 * t_n / len(doc)
        print(f"numpy: {t_n:.2f} s ({res['numpy_s_per_1k_tokens']:.3f} s per 1K tokens, one run)", flush=True)
    print("backend check " + ("passed" if res["ok"] else "FAILED"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
