#!/usr/bin/env bash
# Fault-injection soak (issue 10): the random mode of
# tests/fault_injection_test.cc (FaultInjection.RandomFaultsAgainstAModel)
# for many seeds and more steps than CI runs. Each run mixes appends,
# deletions, commits, compactions, top-k and exact attends, stream reads,
# verifies and reopens
# (reader drawn per reopen: io_uring or pread) while the io layer fails
# writes, syncs, opens, truncations, reads and io_uring submissions at
# random, and checks every outcome against a model of the committed
# documents. Stops at the first failing seed and prints how to rerun it.
#
# Usage: tools/fault_soak.sh [SEEDS] [STEPS] [BUILD_DIR]
#   SEEDS      runs, seeds FIRST..FIRST+SEEDS-1 (FIRST: $MSA_FAULT_SEED or 1); default 20
#   STEPS      operations per run; default 3000
#   BUILD_DIR  where msa_fault_injection_tests was built; default build
# MSA_FAULT_TEST_DIR picks the directory for the stores (default /dev/shm).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-20}
steps=${2:-3000}
build=${3:-build}
bin="$build/tests/msa_fault_injection_tests"
if [ ! -x "$bin" ]; then
  echo "no $bin: build it first (cmake --build $build --target msa_fault_injection_tests)" >&2
  exit 2
fi
first=${MSA_FAULT_SEED:-1}
faults=0 ok=0 failed=0 reopens=0 docs=0
start=$(date +%s)
for ((i = 0; i < seeds; i++)); do
  seed=$((first + i))
  if ! out=$(MSA_FAULT_SEED=$seed MSA_FAULT_RANDOM_STEPS=$steps \
             "$bin" --gtest_filter=FaultInjection.RandomFaultsAgainstAModel 2>&1); then
    echo "$out" | grep -v '\[info\]\|\[warning\]' | tail -40
    echo "FAILED at seed $seed; rerun with:" >&2
    echo "  MSA_FAULT_SEED=$seed MSA_FAULT_RANDOM_STEPS=$steps $bin --gtest_filter=FaultInjection.RandomFaultsAgainstAModel" >&2
    exit 1
  fi
  totals=$(echo "$out" | grep '^random totals:')
  get() { echo "$totals" | sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }
  faults=$((faults + $(get faults)))
  ok=$((ok + $(get ok_calls)))
  failed=$((failed + $(get failed_calls)))
  reopens=$((reopens + $(get reopens)))
  docs=$((docs + $(get documents)))
  echo "seed $seed: $(echo "$out" | grep '^random faults:' | sed 's/^random faults: seed [0-9]*, //')"
done
echo "fault soak: $seeds seeds x $steps steps in $(( $(date +%s) - start )) s: $faults faults injected;" \
     "$failed calls failed (each after a fault it had to report, or a write refused after a failed commit), $ok calls OK (each checked against the" \
     "model); $reopens reopens held exactly the committed documents ($docs live at the ends of the runs);" \
     "nothing lost, no wrong answer"
