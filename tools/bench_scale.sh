#!/usr/bin/env bash
# Scaling benchmark (issue 7): stores of growing size, one stream (1 layer,
# 1 KV head, head dim 128), each built by streaming a synthetic corpus
# straight into it (`msa synth --into-store`, no intermediate files) and
# measured in a fresh process (msa_bench_scale). Per size, in the same run:
#   - fio sequential write (--rw=write --direct=1 --bs=1M) on the same file
#     system just before the ingest: the disk's baseline
#   - ingest tokens/s, MB/s of fp16 K/V in and of segments written, peak RSS
#     (/usr/bin/time -v), where the time went (append/commit/waiting)
#   - store size on disk (apparent and allocated; segments, catalog, router)
#   - open time (page cache dropped first when root), resident set after open
#   - query latency p50/p99, cold (O_DIRECT reads) and warm (block cache),
#     top-k routing against exact dense attention over the same stream (the
#     store's exact mode, taken in parts of ~1M tokens and merged by LSE)
#   - needle hit rate over every query row; output error and attention mass
#     against the dense reference on the first DENSE_ROWS rows
#   - one `msa query` process end to end (start, open, one query, exit)
# A size is skipped (and recorded as skipped) when its estimated store would
# leave less than KEEP_FREE_GB free. Stores are deleted after measuring
# unless KEEP=1. Results: WORKDIR/results/<tokens>/*, then
# tools/plot_scale.py writes OUT/scale_results.{json,csv} and
# OUT/scale_latency.png.
#
#   usage: tools/bench_scale.sh [WORKDIR] [SIZES...]
#     SIZES default: 100000 1000000 10000000 100000000
#   env:   MSA_BUILD=build  CODEC=int8  SUMMARY=hybrid  Q_HEADS=4  QUERIES=64
#          DOC_TOKENS=262144  TOP_K=64  REPEATS=5  NEEDLE_SPAN=1  NEEDLE_STRENGTH=18
#          DENSE_ROWS=16 DENSE_SAMPLES=3 (sizes up to 1e7)
#          BIG_DENSE_ROWS=4 BIG_DENSE_SAMPLES=1 (larger: every dense pass reads the whole store)
#          KEEP_FREE_GB=15  FIO_SIZE=4G  OUT=docs  KEEP=0  DROP_CACHES=1  PYTHON=/usr/bin/python3
#          ROUTING=default,exact (msa_bench_scale --routing: settings compared on the same
#          queries; the first is the one plotted)  COARSE_GROUP_BLOCKS=0 (group summaries
#          for coarseN routings)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${1:-bench-scale}
shift || true
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(100000 1000000 10000000 100000000)
build=${MSA_BUILD:-build}
msa=$repo/$build/msa
bench=$repo/$build/msa_bench_scale
codec=${CODEC:-int8}
summary=${SUMMARY:-hybrid}
q_heads=${Q_HEADS:-4}
queries=${QUERIES:-64}
doc_tokens=${DOC_TOKENS:-262144}
top_k=${TOP_K:-64}
repeats=${REPEATS:-5}
keep_free_gb=${KEEP_FREE_GB:-15}
fio_size=${FIO_SIZE:-4G}
out=${OUT:-docs}
py=${PYTHON:-/usr/bin/python3}  # with numpy and matplotlib (apt-get install python3-numpy python3-matplotlib)
for tool in "$msa" "$bench"; do
  [[ -x $tool ]] || { echo "bench_scale: $tool missing (cmake --build $build --target msa_cli msa_bench_scale)" >&2; exit 2; }
done
command -v fio >/dev/null || { echo "bench_scale: fio missing (apt-get install fio)" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "bench_scale: /usr/bin/time missing (apt-get install time)" >&2; exit 2; }
mkdir -p "$work/results"
work=$(cd "$work" && pwd)

# Bytes per token on disk by codec (segments, 4 KiB-padded records, K and V
# of head dim 128) plus the catalog, for the free-space check; refined from
# each measured size.
case $codec in
  f16|bf16) bpt=540 ;;
  int8) bpt=340 ;;
  int4) bpt=200 ;;
  *) bpt=540 ;;
esac

json_get() { "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval('d'+sys.argv[2]))" "$@"; }

for tokens in "${sizes[@]}"; do
  res=$work/results/$tokens
  store=$work/store-$tokens
  corpus=$work/corpus-$tokens
  rm -rf "$res" "$store" "$corpus"
  mkdir -p "$res"
  avail=$(df -B1 --output=avail "$work" | tail -1)
  need=$("$py" -c "print(int($tokens * $bpt * 1.1))")
  if (( avail - need < keep_free_gb * 1000000000 )); then
    echo "== $tokens tokens: skipped (store ~$((need / 1000000000)) GB, $((avail / 1000000000)) GB free, keeping $keep_free_gb GB)"
    "$py" -c "import json,sys; json.dump({'tokens': $tokens, 'skipped': 'disk: store ~%d GB, %d GB free, %d GB kept free' % ($need/1e9, $avail/1e9, $keep_free_gb)}, open(sys.argv[1], 'w'))" "$res/skipped.json"
    continue
  fi
  if (( tokens > 10000000 )); then
    dense_rows=${BIG_DENSE_ROWS:-4}; dense_samples=${BIG_DENSE_SAMPLES:-1}
  else
    dense_rows=${DENSE_ROWS:-16}; dense_samples=${DENSE_SAMPLES:-3}
  fi
  echo "== $tokens tokens ($codec, summary $summary, $q_heads query heads, documents of $doc_tokens tokens)"
  {
    echo "{\"tokens\": $tokens, \"codec\": \"$codec\", \"summary\": \"$summary\", \"q_heads\": $q_heads,"
    echo " \"queries\": $queries, \"doc_tokens\": $doc_tokens, \"top_k\": $top_k, \"dense_rows\": $dense_rows,"
    echo " \"dense_samples\": $dense_samples, \"date\": \"$(date -u +%FT%TZ)\", \"host_cpus\": $(nproc),"
    echo " \"loadavg_before\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"free_bytes_before\": $avail}"
  } > "$res/meta.json"

  # 1. The disk's sequential write, same file system, right before the ingest.
  fio --name=seqw --filename="$work/fio.tmp" --rw=write --direct=1 --bs=1M --size="$fio_size" \
    --ioengine=psync --end_fsync=1 --output-format=json > "$res/fio.json" 2>/dev/null
  rm -f "$work/fio.tmp"
  echo "   fio sequential write: $(json_get "$res/fio.json" "['jobs'][0]['write']['bw_bytes']/1e6" | cut -c1-6) MB/s"

  # 2. Ingest: the corpus streamed into a fresh store.
  "$msa" create "$store" --layers 1 --kv-heads 1 --head-dim 128 --codec "$codec" --summary "$summary" >/dev/null
  /usr/bin/time -v -o "$res/ingest.time" "$msa" synth "$corpus" --into-store "$store" --tokens "$tokens" \
    --doc-tokens "$doc_tokens" --layers 1 --kv-heads 1 --q-heads "$q_heads" --head-dim 128 --rng fast \
    --queries "$queries" --needle-span "${NEEDLE_SPAN:-1}" --needle-strength "${NEEDLE_STRENGTH:-18}" \
    --json > "$res/ingest.json"
  echo "   ingest: $(json_get "$res/ingest.json" "['tokens_per_s']" | cut -d. -f1) tokens/s," \
       "$(json_get "$res/ingest.json" "['written_mb_per_s']" | cut -c1-6) MB/s written," \
       "$(json_get "$res/ingest.json" "['seconds']" | cut -c1-6) s"
  "$msa" stats "$store" --json > "$res/stats.json"
  {
    echo "{\"apparent_bytes\": $(du -sb "$store" | cut -f1), \"allocated_bytes\": $(du -sB1 "$store" | cut -f1),"
    echo " \"segments_bytes\": $(du -sB1 "$store/segments" | cut -f1), \"catalog_bytes\": $(du -sB1 "$store/catalog" | cut -f1),"
    echo " \"router_bytes\": $( [[ -d $store/router ]] && du -sB1 "$store/router" | cut -f1 || echo 0)}"
  } > "$res/du.json"
  bpt=$("$py" -c "print(int($(du -sb "$store" | cut -f1) / $tokens) + 1)")  # apparent: no preallocation

  # 3. Measure in a fresh process, the page cache dropped (cold open).
  drop() { if [[ ${DROP_CACHES:-1} == 1 && -w /proc/sys/vm/drop_caches ]]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi; }
  drop
  /usr/bin/time -v -o "$res/measure.time" "$bench" "$store" --queries "$corpus/queries.npy" \
    --needles "$corpus/needles.json" --top-k "$top_k" --repeats "$repeats" --dense-rows "$dense_rows" \
    --dense-samples "$dense_samples" --routing "${ROUTING:-default,exact}" \
    --coarse-size "${COARSE_GROUP_BLOCKS:-0}" --json > "$res/measure.json"
  echo "   open $(json_get "$res/measure.json" "['open_ms']" | cut -c1-7) ms;" \
       "sparse cold p50 $(json_get "$res/measure.json" "['sparse_cold_ms']['p50']" | cut -c1-6) ms," \
       "warm p50 $(json_get "$res/measure.json" "['sparse_warm_ms']['p50']" | cut -c1-6) ms;" \
       "dense p50 $(json_get "$res/measure.json" "['dense_ms']['p50']" | cut -c1-9) ms;" \
       "needles $(json_get "$res/measure.json" "['needle_hits']")/$(json_get "$res/measure.json" "['needles']")"

  # 4. One query as a user runs it: a new process, cold page cache.
  "$py" -c "import numpy as np,sys; np.save(sys.argv[2], np.load(sys.argv[1])[:1])" "$corpus/queries.npy" "$res/q1.npy"
  drop
  /usr/bin/time -v -o "$res/query.time" "$msa" query "$store" --layer 0 --queries "$res/q1.npy" \
    --out "$res/o1.npy" --top-k "$top_k" --json > "$res/query.json"
  rm -f "$res/q1.npy" "$res/o1.npy"
  echo "loadavg_after $(cut -d' ' -f1-3 /proc/loadavg)" > "$res/loadavg_after.txt"
  cp "$corpus/needles.json" "$res/needles.json"
  [[ ${KEEP:-0} == 1 ]] || rm -rf "$store" "$corpus"
done

[[ $out = /* ]] || out=$repo/$out
"$py" "$repo/tools/plot_scale.py" "$work/results" --out "$out"
