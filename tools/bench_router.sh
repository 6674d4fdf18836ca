#!/usr/bin/env bash
# The router benchmark (issue 3): one synthetic suite per row, one store per
# summary kind, all evaluated with the same queries, budget and settings in
# one run. Prints a markdown table; the JSON of every eval is kept in WORKDIR.
#   usage: tools/bench_router.sh [WORKDIR] [TOKENS] [TOP_K]
# Environment: SUITES (tools/router_suites.sh), SUMMARIES (mean bound centroids hybrid),
#              STRENGTH (needle logit above the noise), COMBINE (max|sum),
#              ROUTINGS (msa eval --nprobe settings, one row each: default,
#              scan, chN; default "default"), CANDIDATES (0: the default).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-bench-out/router}
tokens=${2:-1048576}
top_k=${3:-64}
combine=${COMBINE:-max}
summaries=${SUMMARIES:-mean bound centroids hybrid}
routings=${ROUTINGS:-default}
candidates=${CANDIDATES:-0}
suites=${SUITES:-needle1 needle4 needle16 shift16 outlier16}
rm -rf "$work"; mkdir -p "$work"
cp build/msa "$work/msa"  # a rebuild during the run must not change the binary
msa="$work/msa"
# shellcheck source=tools/router_suites.sh
source tools/router_suites.sh
echo "| suite | summary | routing | needle hits | mass recall mean / p5 | block-oracle mass p5 | token-oracle mass p5 | output error mean / p95 | block recall@k | router recall | scored | route ms p50 | sparse ms p50 | exact ms p50 |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for suite in $suites; do
  # shellcheck disable=SC2046
  $msa synth "$work/$suite" --tokens "$tokens" --docs 4 --layers 1 --kv-heads 2 --q-heads 8 \
    --head-dim 64 --queries 32 $(suite_args "$suite") >/dev/null
  for summary in $summaries; do
    store="$work/$suite-$summary"
    $msa create "$store" --layers 1 --kv-heads 2 --head-dim 64 --summary "$summary" >/dev/null
    for i in 0 1 2 3; do
      $msa ingest "$store" --doc "doc_$i" --keys "$work/$suite/doc_${i}_keys.npy" \
        --values "$work/$suite/doc_${i}_values.npy" >/dev/null 2>&1
    done
    for routing in $routings; do
    $msa eval "$store" --queries "$work/$suite/queries.npy" --needles "$work/$suite/needles.json" \
      --top-k "$top_k" --combine "$combine" --repeats 3 --nprobe "$routing" --candidates "$candidates" \
      --json 2>/dev/null > "$work/$suite-$summary-$routing.json"
    python3 - "$suite" "$summary" "$routing" "$work/$suite-$summary-$routing.json" <<'PY'
import json, sys
suite, summary, routing, path = sys.argv[1:]
j = json.load(open(path))
l = j["latency_ms"]
print(f"| {suite} | {summary} | {routing} | {j['needle_hit_rate']*j['needles']:.0f}/{j['needles']} "
      f"| {j['mass_recall']['mean']:.3f} / {j['mass_recall']['p5']:.3f} "
      f"| {j['oracle_block_mass_recall']['p5']:.3f} | {j['oracle_token_mass_recall']['p5']:.3f} "
      f"| {j['output_error']['mean']:.3f} / {j['output_error']['p95']:.3f} | {j['block_recall']:.3f} "
      f"| {j['router_recall']:.3f} | {100*j['routed_fraction']:.1f}% | {l['sparse_route_p50']:.3f} "
      f"| {l['sparse_p50']:.2f} | {l['exact_store_p50']:.1f} |")
PY
    done
    rm -rf "$store"
  done
  rm -rf "${work:?}/$suite"
done
