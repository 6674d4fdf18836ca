#!/usr/bin/env bash
# The fetch engine against fio, same file, same block size, same queue
# depths (issue 4). The disk of a shared machine drifts, so each queue depth
# runs msa and fio back to back, ROUNDS times, and the medians are compared.
# msa runs three ways: io_uring with plain reads, io_uring with the file and
# buffer registered (IOSQE_FIXED_FILE + READ_FIXED), and the pread pool;
# the CPU column is the process's user + system time per block.
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
echo "| QD | fio io_uring IOPS | msa io_uring blocks/s | ratio | msa io_uring registered blocks/s | ratio | msa pread pool blocks/s | ratio | fio MB/s | CPU us/block io_uring / registered |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for qd in $qds; do
  f_all=""; u_all=""; r_all=""; p_all=""; uc_all=""; rc_all=""
  for round in $(seq "$rounds"); do
    # msa's two io_uring set-ups alternate which goes first, then fio, then pread.
    order=io_uring,io_uring_reg
    ((round % 2)) || order=io_uring_reg,io_uring
    out=$($bench "$file" --gib "$gib" --bs "$bs" --qd "$qd" --seconds 2 --readers "$order")
    u_all+=" $(echo "$out" | awk -F, '$1=="io_uring" {print $3}')"
    uc_all+=" $(echo "$out" | awk -F, '$1=="io_uring" {print $5}')"
    r_all+=" $(echo "$out" | awk -F, '$1=="io_uring_reg" {print $3}')"
    rc_all+=" $(echo "$out" | awk -F, '$1=="io_uring_reg" {print $5}')"
    f_all+=" $(fio --name=rr --filename="$file" --rw=randread --bs="$bs" --size="${gib}G" --direct=1 \
      --ioengine=io_uring --iodepth="$qd" --numjobs=1 --runtime=2 --time_based --output-format=json 2>/dev/null |
      python3 -c "import json,sys; print(round(json.load(sys.stdin)['jobs'][0]['read']['iops']))")"
    p_all+=" $($bench "$file" --gib "$gib" --bs "$bs" --qd "$qd" --seconds 2 --readers pread | awk -F, '$1=="pread" {print $3}')"
  done
  f=$(echo $f_all | median); u=$(echo $u_all | median); r=$(echo $r_all | median); p=$(echo $p_all | median)
  uc=$(echo $uc_all | median); rc=$(echo $rc_all | median)
  awk -v q="$qd" -v f="$f" -v u="$u" -v r="$r" -v p="$p" -v bs="$bs" -v uc="$uc" -v rc="$rc" 'BEGIN {
    printf "| %d | %d | %d | %.2f | %d | %.2f | %d | %.2f | %.0f | %.1f / %.1f |\n", q, f, u, u / f, r, r / f, p, p / f, f * bs / 1e6, uc, rc }'
done
# One query's cold fetch: 64 random blocks in one batch, each reader.
$bench "$file" --gib "$gib" --bs "$bs" --qd 1 --seconds 0.1 | grep '^#.*64 random'
