#!/usr/bin/env bash
# Crash and power-loss soak (issue 10): the CI suite's crash tests with more
# kills, and the power-loss test with more iterations.
#   - CrashTest.* (tests/crash_test.cc, tests/crash_delete_compact_test.cc):
#     a child ingests (or appends, deletes and compacts) and is killed with
#     SIGKILL at a random moment; every acknowledged commit must be there
#     bit-exact after the reopen.
#   - PowerLoss.* (tests/power_loss_test.cc): the power goes at a random
#     write, every file loses what was not synced, the store reopens with
#     every acknowledged commit.
# Stops at the first failure (the test prints the seed or iteration).
#
# Usage: tools/crash_soak.sh [KILLS] [POWER_LOSSES] [BUILD_DIR]
#   KILLS         SIGKILLs per crash test; default 2000 (CI: 200)
#   POWER_LOSSES  power-loss iterations; default 2000 (CI: 200); seed
#                 $MSA_POWER_LOSS_SEED (default 1, CI uses 20261127)
#   BUILD_DIR     where msa_tests and msa_fault_injection_tests were built; default build
# MSA_FAULT_TEST_DIR picks the directory for the power-loss stores (default /dev/shm).
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-2000}
losses=${2:-2000}
build=${3:-build}
for bin in msa_tests msa_fault_injection_tests; do
  if [ ! -x "$build/tests/$bin" ]; then
    echo "no $build/tests/$bin: build it first (cmake --build $build --target $bin)" >&2
    exit 2
  fi
done
start=$(date +%s)
MSA_CRASH_TEST_ITERATIONS=$kills "$build/tests/msa_tests" --gtest_filter='CrashTest.*' 2>/dev/null |
  grep -E '^(crash test|\[  (PASSED|FAILED))|Failure' || { echo "crash soak failed" >&2; exit 1; }
MSA_POWER_LOSS_ITERATIONS=$losses MSA_POWER_LOSS_SEED=${MSA_POWER_LOSS_SEED:-1} \
  "$build/tests/msa_fault_injection_tests" --gtest_filter='PowerLoss.*' 2>/dev/null |
  grep -E '^(power loss|\[  (PASSED|FAILED))|Failure' || { echo "power-loss soak failed" >&2; exit 1; }
echo "crash soak: $kills kills per crash test, $losses power losses, $(( $(date +%s) - start )) s"
