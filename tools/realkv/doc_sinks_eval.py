"""The table of doc_sinks_eval.sh: per layer, mass recall and needle hits of each setting.

    python doc_sinks_eval.py DEST [--settings top16,top16_ds,top43]
"""
import argparse
import glob
import json
import os
import re


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("dest")
    ap.add_argument("--settings", default="top16,top16_ds,top43")
    ap.add_argument("--compact", action="store_true",
                    help="one table: mass recall mean and needle hits, both query sets")
    a = ap.parse_args(argv)
    settings = a.settings.split(",")
    layers = sorted({int(m.group(1)) for f in glob.glob(os.path.join(a.dest, "layer_*.json"))
                     if (m := re.match(r"layer_(\d+)_", os.path.basename(f)))})
    if a.compact:
        load = lambda j, q, s: json.load(open(os.path.join(a.dest, f"layer_{j}{q}_{s}.json")))  # noqa: E731
        print("| layer | mass recall mean: " + " / ".join(settings) + " | needle hits: " + " / ".join(settings)
              + " | in-context q: mass recall mean | in-context q: needle hits |")
        print("|---:|---|---|---|---|")
        tot = {(q, s): 0 for q in ("", "_doc") for s in settings}
        for j in layers:
            cells = []
            for q in ("", "_doc"):
                rs = [load(j, q, s) for s in settings]
                hits = [round(r["needle_hit_rate"] * r["needles"]) for r in rs]
                for s, h in zip(settings, hits):
                    tot[(q, s)] += h
                cells += [" / ".join(f"{r['mass_recall']['mean']:.3f}" for r in rs), " / ".join(map(str, hits))]
            print(f"| {j} | " + " | ".join(cells) + " |")
        needles = load(layers[0], "", settings[0])["needles"] * len(layers)
        print(f"| all (of {needles}) | | " + " / ".join(str(tot[("", s)]) for s in settings) + " | | "
              + " / ".join(str(tot[("_doc", s)]) for s in settings) + " |")
        for s in settings:
            b = [load(j, q, s)["avg_blocks_selected"] for j in layers for q in ("", "_doc")]
            print(f"\n{s}: {min(b):.1f}-{max(b):.1f} blocks per KV head (mean {sum(b) / len(b):.1f})", end="")
        print()
        return
    for qset, label in (("", "no-memory queries"), ("_doc", "in-context queries")):
        print(f"\n{label}: mass recall mean / p5, needle hits (per query and KV head), blocks per KV head\n")
        print("| layer | " + " | ".join(settings) + " |")
        print("|---:|" + "---|" * len(settings))
        tot = {s: [0, 0] for s in settings}
        blocks = {s: [] for s in settings}
        for j in layers:
            cells = []
            for s in settings:
                f = os.path.join(a.dest, f"layer_{j}{qset}_{s}.json")
                if not os.path.exists(f):
                    cells.append("-")
                    continue
                r = json.load(open(f))
                hits = round(r["needle_hit_rate"] * r["needles"])
                tot[s][0] += hits
                tot[s][1] += r["needles"]
                blocks[s].append(r["avg_blocks_selected"])
                cells.append(f"{r['mass_recall']['mean']:.3f} / {r['mass_recall']['p5']:.3f}, "
                             f"{hits}/{r['needles']}, {r['avg_blocks_selected']:.1f}")
            print(f"| {j} | " + " | ".join(cells) + " |")
        print("| all | " + " | ".join(f"{tot[s][0]}/{tot[s][1]}, "
                                      f"{sum(blocks[s]) / max(len(blocks[s]), 1):.1f}" for s in settings) + " |")


if __name__ == "__main__":
    main()
