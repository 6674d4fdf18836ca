"""A real-text corpus from files that Debian packages install, with planted passkeys.

Sources, in this order of kinds, taken in turn (one document of each kind,
then the next round) so that even a small token budget mixes them:
  licence   /usr/share/common-licenses/*           (base-files)
  info      /usr/share/info/*.info*.gz             (coreutils, sed, grep, gettext, ...)
  man       /usr/share/man/man{1,5,7,8}/*.gz        rendered by `man --nh --nj -P cat -l`
                                                    (less google-cloud-cli's 16,000 gcloud_* pages)
  copyright /usr/share/doc/*/copyright             (deduplicated by content)
Files are taken in a seeded order (by a hash of seed and path; licences in
order), so adding a package inserts its files without reordering the rest;
the corpus records every file it used with its
sha256, so another machine (other packages installed) can tell whether its
corpus is the same.

Documents: each kind's files are concatenated (blank line between files) and
cut at line boundaries into documents of at most --max-tokens tokens (the
model runs each document independently, positions 0..T-1). The corpus stops
at --tokens tokens in all.

Passkeys: --passkeys sentences "The pass key of the LABEL is NNNNN. Remember
it. NNNNN is the pass key of the LABEL." are inserted at line boundaries at
evenly spread depths of the whole stream (document, token offset recorded
after tokenising the final text), each LABEL distinct so that each query asks
for exactly one of them. Queries: for each passkey, one prompt per template
ending right before the answer ("... The pass key of the LABEL is"), so the
query vector of the last position is the one that should find the digits.

Output: corpus.json (see build_corpus's return value).
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys

LABELS = [
    "amber vault", "blue door", "cedar cabin", "copper gate", "crimson box", "delta hangar",
    "ember tower", "falcon project", "garnet locker", "granite bridge", "harbor office",
    "indigo chest", "ivory room", "jade garden", "juniper lab", "kestrel file", "lantern hall",
    "lemon safe", "maple shed", "marble court", "nickel drawer", "north gate", "oak library",
    "olive cellar", "onyx terminal", "orchid studio", "pearl archive", "pine lodge",
    "quartz server", "raven account", "ruby cabinet", "saffron kitchen", "silver garage",
    "slate workshop", "spruce depot", "tiger project", "topaz console", "umber attic",
    "velvet theater", "violet mailbox", "walnut desk", "willow barn", "zephyr station",
    "zinc warehouse", "aspen chalet", "birch school", "cobalt bunker", "dune outpost",
    "elm clinic", "fern pavilion", "glacier base", "hazel museum", "iris gallery",
    "jasper tunnel", "koala ranch", "lotus temple", "meadow farm", "nova platform",
    "opal vault", "prairie mill", "quill bookstore", "reef lighthouse", "sable garage",
    "tundra camp",
]

PASSKEY_SENTENCE = "The pass key of the {label} is {key}. Remember it. {key} is the pass key of the {label}."
QUERY_TEMPLATES = [
    "What is the pass key of the {label}? The pass key of the {label} is",
    "Question: what number is the pass key of the {label}?\nAnswer: The pass key of the {label} is",
]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _clean(text: str) -> str:
    text = re.sub(r".\x08", "", text)  # overstrike (bold/underline in rendered man pages)
    text = text.replace("\x0c", "\n").replace("\r\n", "\n")
    return _CONTROL.sub("", text)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_files(root: str = "/"):
    """kind -> sorted list of (path, loader); loader() returns (text, sha256 of the file)."""
    j = lambda *p: os.path.join(root, *p)  # noqa: E731

    def plain(path):
        data = open(path, "rb").read()
        return data.decode("utf-8", "replace"), _sha256(data)

    def gz(path):
        data = open(path, "rb").read()
        return gzip.decompress(data).decode("utf-8", "replace"), _sha256(data)

    def man(path):
        data = open(path, "rb").read()
        env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="0", LC_ALL="C.UTF-8")
        try:
            out = subprocess.run(["man", "--nh", "--nj", "-P", "cat", "-l", path], env=env,
                                 capture_output=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = b""
        return out.decode("utf-8", "replace"), _sha256(data)

    kinds = {}
    kinds["licence"] = [(p, plain) for p in sorted(glob.glob(j("usr/share/common-licenses/*")))
                        if os.path.isfile(p) and not os.path.islink(p)]
    kinds["info"] = [(p, gz) for p in sorted(glob.glob(j("usr/share/info/*.info*.gz")))]
    mans = []
    for sec in ("1", "5", "7", "8"):
        mans += sorted(glob.glob(j(f"usr/share/man/man{sec}/*.gz")))
    # gcloud_*: 16,000 near-identical generated pages of one SDK (google-cloud-cli) would crowd out the rest
    kinds["man"] = [(p, man) for p in mans
                    if not os.path.islink(p) and not os.path.basename(p).startswith(("gcloud_", "gcloud."))]
    seen, cps = set(), []
    for p in sorted(glob.glob(j("usr/share/doc/*/copyright"))):
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        h = _sha256(open(p, "rb").read())
        if h not in seen:
            seen.add(h)
            cps.append((p, plain))
    kinds["copyright"] = cps
    return kinds


def _split_long(line: str, limit: int = 2000):
    while len(line) > limit:
        cut = line.rfind(" ", 0, limit)
        cut = cut if cut > limit // 2 else limit
        yield line[:cut]
        line = line[cut:]
    yield line


def _kind_documents(files, tok, max_tokens: int, sources_used: list):
    """Yields (text, [paths]) documents of at most max_tokens tokens."""
    cur, cur_tokens, cur_src = [], 0, []
    for path, load in files:
        text, digest = load(path)
        text = _clean(text).strip("\n")
        if len(text) < 200:
            continue
        sources_used.append({"path": path, "sha256": digest})
        lines = []
        for ln in (text + "\n\n").splitlines(keepends=True):
            lines.extend(_split_long(ln))
        for ln in lines:
            n = len(tok.encode(ln))
            if cur and cur_tokens + n > max_tokens:
                yield _fit("".join(cur), tok, max_tokens), cur_src
                cur, cur_tokens, cur_src = [], 0, []
            if not cur and not ln.strip():
                continue
            cur.append(ln)
            cur_tokens += n
            if not cur_src or cur_src[-1] != path:
                cur_src.append(path)
    if cur:
        yield _fit("".join(cur), tok, max_tokens), cur_src


def _fit(text: str, tok, max_tokens: int) -> str:
    """text, shortened at line ends until it tokenises to <= max_tokens."""
    text = text.rstrip("\n") + "\n"
    while len(tok.encode(text)) > max_tokens:
        cut = text.rstrip("\n").rfind("\n")
        if cut <= 0:
            ids = tok.encode(text)[:max_tokens]
            return tok.decode(ids)
        text = text[:cut + 1]
    return text


def build_corpus(tok, tokens: int, max_tokens: int = 2048, passkeys: int = 16, seed: int = 1,
                 templates=None, root: str = "/", kinds_order=("licence", "info", "man", "copyright")):
    """Returns the corpus dict:
      documents: [{name, text, kind, sources, tokens}]  (tokens: count after planting)
      passkeys:  [{id, label, key, sentence, doc, doc_index, char_offset, token_offset,
                   digits_token_offset, digits_tokens, sentence_tokens, position}]
                 position = global stream position of the first answer digit
                 (documents concatenated in order, as msa ingests them)
      queries:   [{query, passkey, template, text}]
      sources:   [{path, sha256}]"""
    templates = templates or QUERY_TEMPLATES
    if passkeys > len(LABELS):
        raise ValueError(f"at most {len(LABELS)} passkeys (distinct labels)")
    rng = random.Random(seed)
    margin = 128  # room for passkey sentences (about 35 tokens each)
    all_kinds = source_files(root)
    for k in kinds_order:  # a seeded order, so a small budget still samples many files; a
        if k != "licence":  # per-path hash, so a package installed later does not reorder the rest
            all_kinds.get(k, []).sort(key=lambda f: hashlib.sha256(f"{seed}:{f[0]}".encode()).digest())
    sources_used = []
    gens = [_kind_documents(all_kinds[k], tok, max_tokens - margin, sources_used)
            for k in kinds_order if all_kinds.get(k)]
    names = [k for k in kinds_order if all_kinds.get(k)]
    docs, total = [], 0
    live = list(range(len(gens)))
    stop = False
    while total < tokens and live and not stop:
        for gi in list(live):
            if total >= tokens:
                break
            try:
                text, src = next(gens[gi])
            except StopIteration:
                live.remove(gi)
                continue
            n = len(tok.encode(text))
            if total + n > tokens:  # last document: cut to the budget, unless only a scrap is left
                if tokens - total < 256:
                    stop = True
                    break
                text = _fit(text, tok, max(1, tokens - total))
                n = len(tok.encode(text))
            docs.append({"name": f"doc_{len(docs)}", "text": text, "kind": names[gi], "sources": src})
            total += n
    if total < tokens and not stop:
        print(f"corpus: only {total} tokens of text found (asked for {tokens})", file=sys.stderr)

    # Plant passkeys at evenly spread depths of the stream (jittered).
    counts = [len(tok.encode(d["text"])) for d in docs]
    starts = [sum(counts[:i]) for i in range(len(counts))]
    labels = rng.sample(LABELS, passkeys)
    plan = []
    for i in range(passkeys):
        depth = int((i + rng.uniform(0.1, 0.9)) / passkeys * total)
        di = max(j for j in range(len(docs)) if starts[j] <= depth) if docs else 0
        plan.append((di, (depth - starts[di]) / max(1, counts[di]), labels[i], rng.randrange(10000, 100000)))
    by_doc = {}
    for pk_id, (di, frac, label, key) in enumerate(plan):
        by_doc.setdefault(di, []).append((frac, pk_id, label, key))
    planted = {}
    for di, items in by_doc.items():
        text = docs[di]["text"]
        # insert deepest first so earlier character offsets stay valid
        for frac, pk_id, label, key in sorted(items, reverse=True):
            target = int(frac * len(text))
            cut = text.rfind("\n", 0, target) + 1  # line start at or before the depth (0 if none)
            sentence = PASSKEY_SENTENCE.format(label=label, key=key)
            text = text[:cut] + sentence + "\n" + text[cut:]
            planted[pk_id] = (label, key, sentence)
        docs[di]["text"] = text
    # Locate every passkey after tokenising the final text.
    records = []
    for di, d in enumerate(docs):
        ids, offs = tok.encode_with_offsets(d["text"])
        if len(ids) > max_tokens:
            raise AssertionError(f"{d['name']}: {len(ids)} tokens > {max_tokens}")
        d["tokens"] = len(ids)
        for frac, pk_id, label, key in by_doc.get(di, []):
            sentence = planted[pk_id][2]
            c0 = d["text"].find(sentence)
            assert c0 >= 0
            t0 = next(t for t, (s, e) in enumerate(offs) if e > c0)
            c_digits = c0 + sentence.index(str(key))
            digit_tokens = [t for t, (s, e) in enumerate(offs) if s >= c_digits and e <= c_digits + len(str(key))]
            assert tok.decode([ids[t] for t in digit_tokens]) == str(key), (d["name"], key)
            t_end = next(t for t, (s, e) in enumerate(offs) if e >= c0 + len(sentence))
            records.append({"id": pk_id, "label": label, "key": str(key), "sentence": sentence,
                            "doc": d["name"], "doc_index": di, "char_offset": c0, "token_offset": t0,
                            "sentence_tokens": t_end + 1 - t0,
                            "digits_token_offset": digit_tokens[0], "digits_tokens": len(digit_tokens)})
    starts = [sum(d["tokens"] for d in docs[:i]) for i in range(len(docs))]
    for r in records:
        r["position"] = starts[r["doc_index"]] + r["digits_token_offset"]
    records.sort(key=lambda r: r["id"])
    queries = []
    for r in records:
        for ti, t in enumerate(templates):
            queries.append({"query": len(queries), "passkey": r["id"], "template": ti,
                            "text": t.format(label=r["label"])})
    return {"tokens": sum(d["tokens"] for d in docs), "max_tokens": max_tokens, "seed": seed,
            "documents": docs, "passkeys": records, "queries": queries, "sources": sources_used,
            "passkey_sentence": PASSKEY_SENTENCE, "query_templates": templates}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="corpus.json to write")
    ap.add_argument("--tokens", type=int, default=50000, help="token budget (all documents together)")
    ap.add_argument("--max-tokens", type=int, default=2048, help="tokens per document at most")
    ap.add_argument("--passkeys", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from model import Tokenizer

    tok = Tokenizer()
    c = build_corpus(tok, a.tokens, a.max_tokens, a.passkeys, a.seed)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(c, f, indent=1)
    kinds = {}
    for d in c["documents"]:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + d["tokens"]
    print(f"corpus: {len(c['documents'])} documents, {c['tokens']} tokens ({kinds}), "
          f"{len(c['passkeys'])} passkeys, {len(c['queries'])} queries -> {a.out}")


if __name__ == "__main__":
    main()
