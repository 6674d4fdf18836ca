"""Proves the numpy forward pass is SmolLM2-135M-Instruct's (and so the exported K/V are).

Checks, each printed, all written to --json:
  1. greedy continuations of prompts with one right answer ("The capital of
     France is" -> " Paris", counting sequences, ...) start with the expected text;
  2. perplexity of ordinary English prose (a paragraph written for this check,
     so not memorised) is sane (asserted < --max-ppl), and of one memorised
     text (the opening of the GPL-3 licence, reported only);
  3. Q/K layout: the GGUF's own rows with llama.cpp's adjacent-pair RoPE give
     the same logits as the HF rows (un-permuted) with rotate_half RoPE; and
     as a negative control, the GGUF rows with rotate_half RoPE (the mistake
     of ignoring llama.cpp's permutation) give a far worse perplexity;
  4. (reported) in-context passkey retrieval: a passkey sentence inside ~600
     tokens of licence text, then the question: does greedy decoding produce
     the passkey? This is the task the memory must serve.
  5. tokenizer round trips on the prompts and the prose.
Exit status 1 if any asserted check fails.
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

GREEDY = [
    ("The capital of France is", " Paris"),
    ("The capital of Germany is", " Berlin"),
    ("The largest planet in the solar system is", " Jupiter"),
    ("The opposite of hot is", " cold"),
    ("1, 2, 3, 4, 5, 6,", " 7, 8, 9"),
    ("one, two, three, four,", " five, six"),
    ("A, B, C, D, E,", " F, G, H"),
    ("January, February, March, April,", " May"),
]

PROSE = (
    "Every morning the baker on our street opens her shop a little before six. She sets out the "
    "bread that has been cooling since the early hours, wipes down the counter, and writes the day's "
    "specials on a small chalkboard by the door. Most of her customers are regulars who stop on their "
    "way to work, and she knows many of them by name. Some want a loaf of rye, some a bag of rolls, and "
    "a few always ask for whatever came out of the oven last. On rainy days the shop is quieter, so she "
    "uses the time to try new recipes. Last winter she experimented with a bread made from roasted "
    "pumpkin and walnuts, and it became so popular that she now bakes it every weekend. When people "
    "ask her why she still gets up so early after twenty years, she laughs and says that the smell of "
    "fresh bread is the best alarm clock in the world. In the afternoon, once the shelves are nearly "
    "empty, she cleans the ovens, orders flour for the next week, and walks home through the park, "
    "where she often stops to feed the ducks with the last of the crusts."
)

PASSKEY_FILLER_FILE = "/usr/share/common-licenses/GPL-3"


def greedy(model, tok, prompt: str, n: int) -> str:
    ids = tok.encode(prompt)
    out = []
    for _ in range(n):
        nx = int(np.argmax(model.forward(ids, logits_last_only=True)["logits"][-1]))
        out.append(nx)
        ids = ids + [nx]
    return tok.decode(out)


def perplexity(model, ids) -> float:
    logits = model.forward(ids)["logits"][:-1].astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), np.asarray(ids[1:])]
    return float(np.exp(nll.mean()))


def gguf_layout_copy(m: M.Model) -> M.Model:
    """The same model with the GGUF's own Q/K rows (permuted back from HF)."""
    import copy

    g = copy.copy(m)
    g.layers = []
    for L in m.layers:
        L2 = copy.copy(L)
        L2.wq = np.ascontiguousarray(M.permute_qk(L.wq.T, m.cfg.q_heads).T)
        L2.wk = np.ascontiguousarray(M.permute_qk(L.wk.T, m.cfg.kv_heads).T)
        g.layers.append(L2)
    g.layout = "gguf"
    return g


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--max-ppl", type=float, default=40.0, help="largest perplexity of the prose accepted")
    ap.add_argument("--skip-passkey", action="store_true", help="skip the in-context passkey check (slowest)")
    a = ap.parse_args(argv)
    res = {"ok": True, "checks": []}

    def check(name, ok, **kw):
        res["checks"].append(dict(name=name, ok=bool(ok), **kw))
        res["ok"] &= bool(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {name}: " + ", ".join(f"{k}={v!r}" for k, v in kw.items()), flush=True)

    t0 = time.time()
    path = M.gguf_path()
    m = M.load_model(path)
    tok = M.Tokenizer(path)
    res["model"] = {"file": path, "bytes": os.path.getsize(path), "sha256": M.sha256_of(path),
                    "name": m.meta["name"], "config": m.cfg.__dict__, "load_s": time.time() - t0}
    from export import package_versions

    res["packages"] = package_versions()
    print(f"model {m.meta['name']} ({os.path.getsize(path)} bytes, sha256 {res['model']['sha256']}), "
          f"packages {res['packages']}", flush=True)

    for text in [p for p, _ in GREEDY] + [PROSE, "Tabs\tand  two spaces, 12345 digits, ünïcödé, emoji \U0001F600."]:
        ids = tok.encode(text)
        check("tokenizer round trip", tok.decode(ids) == text, text=text[:40], tokens=len(ids))

    for prompt, want in GREEDY:
        got = greedy(m, tok, prompt, len(tok.encode(want)) + 1)
        check("greedy continuation", got.startswith(want), prompt=prompt, expected=want, got=got)

    prose_ids = tok.encode(PROSE)
    ppl = perplexity(m, prose_ids)
    check("perplexity of plain English prose", ppl < a.max_ppl, tokens=len(prose_ids), ppl=round(ppl, 2))
    res["perplexity_prose"] = ppl
    if os.path.exists(PASSKEY_FILLER_FILE):
        gpl_ids = tok.encode(open(PASSKEY_FILLER_FILE).read())[:1024]
        res["perplexity_gpl3_1024"] = perplexity(m, gpl_ids)
        print(f"info perplexity of the first 1024 tokens of GPL-3 (memorised text): "
              f"{res['perplexity_gpl3_1024']:.2f}", flush=True)

    g = gguf_layout_copy(m)
    probe = prose_ids[:96]
    lh = m.forward(probe)["logits"]
    lg = g.forward(probe)["logits"]
    diff = float(np.abs(lh - lg).max())
    check("GGUF rows + adjacent-pair RoPE == HF rows + rotate_half", diff < 1e-2 * float(np.abs(lh).max()),
          max_abs_logit_diff=round(diff, 5))
    g.layout = "hf"  # the mistake: GGUF rows, rotate_half RoPE
    wrong = perplexity(g, prose_ids)
    check("negative control: ignoring the Q/K permutation is far worse", wrong > 2 * ppl,
          ppl_wrong_layout=round(wrong, 2), ppl_right=round(ppl, 2))
    res["perplexity_prose_wrong_qk_layout"] = wrong
    del g

    if not a.skip_passkey and os.path.exists(PASSKEY_FILLER_FILE):
        filler = open(PASSKEY_FILLER_FILE).read()
        lines = filler.splitlines(keepends=True)
        from corpus import PASSKEY_SENTENCE, QUERY_TEMPLATES

        found = []
        for label, key, at in (("amber vault", "48213", 20), ("oak library", "70615", 45)):
            text = "".join(lines[:at]) + PASSKEY_SENTENCE.format(label=label, key=key) + "\n" + "".join(lines[at:80])
            for tpl in QUERY_TEMPLATES:
                prompt = text + "\n" + tpl.format(label=label)
                got = greedy(m, tok, prompt, 6)
                found.append({"label": label, "key": key, "context_tokens": len(tok.encode(prompt)),
                              "template": tpl, "got": got, "hit": got.strip().startswith(key)})
                print(f"info in-context passkey ({found[-1]['context_tokens']} tokens): expected {key}, "
                      f"got {got!r}", flush=True)
        res["in_context_passkey"] = found
        res["in_context_passkey_hits"] = sum(f["hit"] for f in found)
    res["seconds"] = time.time() - t0
    print(f"{'all checks passed' if res['ok'] else 'SOME CHECKS FAILED'} ({res['seconds']:.0f} s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
