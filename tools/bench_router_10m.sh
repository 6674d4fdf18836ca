#!/usr/bin/env bash
# Issue 3's goal run: per suite, one stream of TOKENS (default 10M) tokens,
# the hybrid summary, and one `msa eval` comparing the default routing with
# the exact scan of every summary and 8 channels, against the dense float64
# oracle. Prints a markdown table; every eval's JSON stays in WORKDIR.
#   usage: tools/bench_router_10m.sh [WORKDIR] [TOKENS]
# Environment: SUITES (default "needle1 needle4 needle16 shift16"; names in
# tools/router_suites.sh), STRENGTH (16), MSA_BUILD (build), ROUTINGS (the
# eval's --nprobe list, default "scan,default,ch8"), EVAL_ARGS (more eval
# options, e.g. "--coarse-size 4" for coarseN settings).
# Disk: the suite's .npy (2.7 GB at 10M) and store (2.8 GB), one suite at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-bench-out/router-10m}
tokens=${2:-10485760}
suites=${SUITES:-needle1 needle4 needle16 shift16}
mkdir -p "$work"
cp "${MSA_BUILD:-build}/msa" "$work/msa"  # a rebuild during the run must not change the binary
msa="$work/msa"
# shellcheck source=tools/router_suites.sh
source tools/router_suites.sh
for suite in $suites; do
  args=$(suite_args "$suite")
  rm -rf "$work/corpus" "$work/store"
  # shellcheck disable=SC2086
  $msa synth "$work/corpus" --tokens "$tokens" --docs 8 --layers 1 --kv-heads 1 --q-heads 4 --head-dim 64 \
    --queries 16 $args >/dev/null
  $msa create "$work/store" --layers 1 --kv-heads 1 --head-dim 64 --summary hybrid >/dev/null
  for i in 0 1 2 3 4 5 6 7; do
    $msa ingest "$work/store" --doc "doc_$i" --keys "$work/corpus/doc_${i}_keys.npy" \
      --values "$work/corpus/doc_${i}_values.npy" >/dev/null 2>&1
  done
  rm -f "$work"/corpus/doc_*
  # shellcheck disable=SC2086  # EVAL_ARGS: several options
  $msa eval "$work/store" --queries "$work/corpus/queries.npy" --needles "$work/corpus/needles.json" --top-k 64 \
    --repeats 5 --exact-samples 1 --nprobe "${ROUTINGS:-scan,default,ch8}" ${EVAL_ARGS:-} --json 2>/dev/null > "$work/$suite.json"
done
rm -rf "$work/corpus" "$work/store"
# shellcheck disable=SC2086  # one argument per suite
python3 - "$work" $suites <<'PY'
import json, sys
work, suites = sys.argv[1], sys.argv[2:]
print("| suite | routing | needle hits | mass recall mean / p5 | block-oracle mass mean / p5 | token-oracle p5 "
      "| output error mean / p95 | block recall@k | router recall | values scored | route ms p50 / p99 "
      "| sparse ms p50 (warm) | cold p50 |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
notes = []
for suite in suites:
    j = json.load(open(f"{work}/{suite}.json"))
    for s in j["settings"]:
        l = s["latency_ms"]
        print(f"| {suite} | {s['setting']} | {s['needle_hit_rate']*j['needles']:.0f}/{j['needles']} "
              f"| {s['mass_recall']['mean']:.3f} / {s['mass_recall']['p5']:.3f} "
              f"| {s['oracle_block_mass_recall']['mean']:.3f} / {s['oracle_block_mass_recall']['p5']:.3f} "
              f"| {j['oracle_token_mass_recall']['p5']:.3f} "
              f"| {s['output_error']['mean']:.3f} / {s['output_error']['p95']:.3f} | {s['block_recall']:.3f} "
              f"| {s['router_recall']:.3f} | {100*s['routed_fraction']:.1f}% "
              f"| {l['sparse_route_p50']:.2f} / {l['sparse_route_p99']:.2f} | {l['sparse_p50']:.2f} "
              f"| {l['sparse_cold_p50']:.2f} |")
    notes.append(f"{suite}: dense f64 in memory {j['latency_ms']['dense_in_memory_f64_p50']:.0f} ms, "
                 f"exact store {j['latency_ms']['exact_store_p50']:.0f} ms, open {j['open_ms']:.0f} ms")
print()
print("; ".join(notes))
PY
