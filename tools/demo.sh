#!/usr/bin/env bash
# The main job: set up, generate a synthetic corpus with planted needles,
# ingest it with the CLI, then (a new process: a restart) query it and print
# quality and latency of sparse against dense attention, side by side.
#   MSA_DEMO_TOKENS (default 262144), MSA_DEMO_DIR (default ./demo-out)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh

msa=build/msa
out=${MSA_DEMO_DIR:-demo-out}
tokens=${MSA_DEMO_TOKENS:-262144}
docs=4
rm -rf "$out"
mkdir -p "$out"

echo "== generating $tokens tokens in $docs documents (2 layers, 2 KV heads, 8 query heads, head dim 64)"
$msa synth "$out/corpus" --tokens "$tokens" --docs $docs --layers 2 --kv-heads 2 --q-heads 8 --head-dim 64

echo "== ingesting with the CLI"
$msa create "$out/store" --layers 2 --kv-heads 2 --head-dim 64 --block-tokens 64
start=$(date +%s.%N)
for ((i = 0; i < docs; i++)); do
  $msa ingest "$out/store" --doc "doc_$i" --keys "$out/corpus/doc_${i}_keys.npy" \
    --values "$out/corpus/doc_${i}_values.npy"
done
end=$(date +%s.%N)
raw=$(du -cb "$out"/corpus/doc_*.npy | tail -1 | cut -f1)
awk -v r="$raw" -v s="$start" -v e="$end" 'BEGIN { printf "ingest: %.1f MB of fp16 K/V in %.2f s = %.1f MB/s (4 processes, each synced)\n", r/1e6, e-s, r/1e6/(e-s) }'
$msa stats "$out/store"

echo "== reopened: querying layer 0 (sparse top-k 16 vs dense)"
$msa eval "$out/store" --queries "$out/corpus/queries.npy" --needles "$out/corpus/needles.json" --top-k 16
