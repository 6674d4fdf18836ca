#!/usr/bin/env bash
# `msa ingest --dir` of .npy shards already in the page cache (fp16 K/V, one
# stream, head dim 128), against builds given on the command line, each
# REPEATS times interleaved so that they see the same machine load; fio's
# sequential write on the same file system first.
#   usage: tools/bench_ingest_dir.sh SHARDS_DIR WORKDIR BUILD...
#   env:   CODEC=int8 SUMMARY=hybrid REPEATS=2 FIO_SIZE=4G
# Make the shards with e.g.
#   build/msa synth SHARDS_DIR --tokens 2000000 --docs 8 --layers 1 --kv-heads 1 --head-dim 128
set -euo pipefail
cd "$(dirname "$0")/.."
shards=$1 work=$2
shift 2
mkdir -p "$work"
cat "$shards"/*.npy > /dev/null  # into the page cache
fio --name=seqw --filename="$work/fio.tmp" --rw=write --direct=1 --bs=1M --size="${FIO_SIZE:-4G}" \
  --ioengine=psync --end_fsync=1 --output-format=json 2>/dev/null |
  python3 -c "import json,sys; print('fio sequential write: %.0f MB/s' % (json.load(sys.stdin)['jobs'][0]['write']['bw_bytes']/1e6))"
rm -f "$work/fio.tmp"
for rep in $(seq "${REPEATS:-2}"); do
  for build in "$@"; do
    rm -rf "$work/store"
    "$build/msa" create "$work/store" --layers 1 --kv-heads 1 --head-dim 128 --codec "${CODEC:-int8}" \
      --summary "${SUMMARY:-hybrid}" > /dev/null
    "$build/msa" ingest "$work/store" --dir "$shards" --json > "$work/ingest.json"
    python3 -c "
import json,sys; d=json.load(open(sys.argv[1]))
print('%-12s %9.0f tokens/s, %6.1f MB/s in, %6.1f MB/s written; append %.2f s, commit %.2f s, waiting for input %.2f s, total %.2f s' % (
  sys.argv[2], d['tokens_per_s'], d['input_mb_per_s'], d['written_mb_per_s'], d['append_s'], d['commit_s'], d['wait_for_input_s'], d['seconds']))" \
      "$work/ingest.json" "$build"
  done
done
rm -rf "$work/store"
