#!/usr/bin/env bash
# Ingest throughput against the disk's sequential write bandwidth, same run,
# same file system. Needs fio (apt-get install fio) and a built msa.
#   usage: tools/bench_ingest.sh [WORKDIR] [TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-bench-out}
tokens=${2:-262144}
msa=build/msa
rm -rf "$work"; mkdir -p "$work"
$msa synth "$work/corpus" --tokens "$tokens" --docs 4 >/dev/null
fio_mbs=$(fio --name=seqw --filename="$work/fio.tmp" --rw=write --bs=1M --size=1G --ioengine=psync \
  --end_fsync=1 --output-format=json 2>/dev/null |
  python3 -c "import json,sys; print(json.load(sys.stdin)['jobs'][0]['write']['bw_bytes']/1e6)")
rm -f "$work/fio.tmp"
$msa create "$work/store" --layers 2 --kv-heads 2 --head-dim 64 >/dev/null
start=$(date +%s.%N)
for i in 0 1 2 3; do
  $msa ingest "$work/store" --doc "doc_$i" --keys "$work/corpus/doc_${i}_keys.npy" \
    --values "$work/corpus/doc_${i}_values.npy" >/dev/null
done
end=$(date +%s.%N)
raw=$(du -cb "$work"/corpus/doc_*.npy | tail -1 | cut -f1)
written=$(du -sb "$work/store" | cut -f1)
awk -v r="$raw" -v w="$written" -v s="$start" -v e="$end" -v f="$fio_mbs" 'BEGIN {
  t = e - s
  printf "fio sequential write (1 MiB, psync, fsync at end): %.1f MB/s\n", f
  printf "msa ingest: %.1f MB of fp16 K/V in %.2f s = %.1f MB/s input, %.1f MB/s written (%.0f%% of fio)\n",
         r/1e6, t, r/1e6/t, w/1e6/t, 100*w/1e6/t/f }'
