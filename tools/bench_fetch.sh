#!/usr/bin/env bash
# The fetch engine against fio, same file, same block size, same queue
# depths (issue 4). The disk of a shared machine drifts, so each queue depth
# runs msa and fio back to back, ROUNDS times, and the medians are compared.
# Needs fio (apt-get install fio) and a built msa_bench_fetch.
#   usage: tools/bench_fetch.sh [WORKDIR] [BLOCK_BYTES] [GIB] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-bench-out/fetch}
bs=${2:-16384}
gib=${3:-4}
rounds=${4:-3}
qds="1 8 32 128 256"
mkdir -p "$work"
file="$work/blocks.dat"
bench=build/msa_bench_fetch
$bench "$file" --gib "$gib" --bs "$bs" --qd 1 --seconds 0.1 --readers io_uring >/dev/null  # writes the file once
median() { tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| QD | fio io_uring IOPS | msa io_uring blocks/s | ratio | msa pread pool blocks/s | ratio | fio MB/s |"
echo "|---|---|---|---|---|---|---|"
for qd in $qds; do
  f_all=""; u_all=""; p_all=""
  for _ in $(seq "$rounds"); do
    u_all+=" $($bench "$file" --gib "$gib" --bs "$bs" --qd "$qd" --seconds 2 --readers io_uring | awk -F, '$1=="io_uring" {print $3}')"
    f_all+=" $(fio --name=rr --filename="$file" --rw=randread --bs="$bs" --size="${gib}G" --direct=1 \
      --ioengine=io_uring --iodepth="$qd" --numjobs=1 --runtime=2 --time_based --output-format=json 2>/dev/null |
      python3 -c "import json,sys; print(round(json.load(sys.stdin)['jobs'][0]['read']['iops']))")"
    p_all+=" $($bench "$file" --gib "$gib" --bs "$bs" --qd "$qd" --seconds 2 --readers pread | awk -F, '$1=="pread" {print $3}')"
  done
  f=$(echo $f_all | median); u=$(echo $u_all | median); p=$(echo $p_all | median)
  awk -v q="$qd" -v f="$f" -v u="$u" -v p="$p" -v bs="$bs" 'BEGIN {
    printf "| %d | %d | %d | %.2f | %d | %.2f | %.0f |\n", q, f, u, u / f, p, p / f, f * bs / 1e6 }'
done
# One query's cold fetch: 64 random blocks in one batch.
$bench "$file" --gib "$gib" --bs "$bs" --qd 1 --seconds 0.1 | grep '^#.*64 random'
