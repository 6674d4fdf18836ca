#!/usr/bin/env bash
# The fetch path through a store (issue 4), BENCHMARKS.md "Fetch path":
#   1. a one-stream store of TOKENS tokens (head dim 128, f16, 64-token
#      blocks), streamed in by `msa synth --into-store`; msa_bench_fetch_store
#      measures per query row, cold (cache dropped) and warm (the same row
#      again), top-64: io_uring with registered files and buffers, io_uring
#      without them, io_uring with decode threads, and the pread fallback,
#      all open side by side on the same store, rows interleaved;
#   2. a store of LAYERS layers x 2 KV heads (OVERLAP_TOKENS tokens each):
#      L layers attended one after another vs with layer l + 1 prefetched
#      before layer l attends, cold cache, passes alternating.
# Stores are deleted at the end unless KEEP=1.
#   usage: tools/bench_fetch_store.sh [WORKDIR]
#   env:   TOKENS=10000000 ROWS=64 TOP_K=64 VARIANTS=io_uring,io_uring_plain,io_uring_dec1,io_uring_dec2,pread
#          LAYERS=8 OVERLAP_TOKENS=262144 PASSES=20 MSA_BUILD=build KEEP=0
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-bench-out/fetch-store}
build=${MSA_BUILD:-build}
tokens=${TOKENS:-10000000}
rows=${ROWS:-64}
top_k=${TOP_K:-64}
variants=${VARIANTS:-io_uring,io_uring_plain,io_uring_dec1,io_uring_dec2,pread}
layers=${LAYERS:-8}
overlap_tokens=${OVERLAP_TOKENS:-262144}
passes=${PASSES:-20}
for tool in "$build/msa" "$build/msa_bench_fetch_store"; do
  [[ -x $tool ]] || { echo "bench_fetch_store: $tool missing (cmake --build $build --target msa_cli msa_bench_fetch_store)" >&2; exit 2; }
done
mkdir -p "$work"
cleanup() { [[ ${KEEP:-0} == 1 ]] || rm -rf "$work/store" "$work/layers"; }
trap cleanup EXIT

if [[ ! -d $work/store ]]; then
  "$build/msa" create "$work/store" --layers 1 --kv-heads 1 --head-dim 128 >/dev/null
  "$build/msa" synth "$work/corpus" --into-store "$work/store" --tokens "$tokens" --doc-tokens 262144 \
    --layers 1 --kv-heads 1 --q-heads 4 --head-dim 128 --rng fast --queries "$rows" --json > "$work/ingest.json"
fi
echo "== cold vs warm, $tokens tokens, top-$top_k, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$build/msa_bench_fetch_store" "$work/store" --queries "$work/corpus/queries.npy" --rows "$rows" \
  --top-k "$top_k" --variants "$variants" --json-out "$work/latency.json"
[[ ${KEEP:-0} == 1 ]] || rm -rf "$work/store"

if [[ ! -d $work/layers ]]; then
  "$build/msa" create "$work/layers" --layers "$layers" --kv-heads 2 --head-dim 128 >/dev/null
  "$build/msa" synth "$work/layers-corpus" --into-store "$work/layers" --tokens "$overlap_tokens" \
    --doc-tokens 262144 --layers "$layers" --kv-heads 2 --q-heads 8 --head-dim 128 --rng fast \
    --queries 32 --json > "$work/layers-ingest.json"
fi
echo "== prefetch overlap, $layers layers x 2 KV heads, $overlap_tokens tokens, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$build/msa_bench_fetch_store" "$work/layers" --queries "$work/layers-corpus/queries.npy" --overlap \
  --passes "$passes" --top-k "$top_k" --json-out "$work/overlap.json"
