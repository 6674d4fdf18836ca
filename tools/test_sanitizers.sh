#!/usr/bin/env bash
# Builds the project with sanitizers and runs the test suite under each:
#   build-asan  -DMSA_SANITIZE=address,undefined  (AddressSanitizer, LeakSanitizer, UBSan)
#   build-tsan  -DMSA_SANITIZE=thread             (ThreadSanitizer)
# CUDA is off in both (nvcc does not take -fsanitize).
#
#   bash tools/test_sanitizers.sh            # both
#   bash tools/test_sanitizers.sh asan       # one of them
#   MSA_SANITIZER_JOBS=4 bash tools/test_sanitizers.sh
#
# What runs: every ctest test (GoogleTest suites, the C API program, the fuzz
# smoke runs) under ASan+UBSan; under TSan the same minus the fuzz smoke runs
# (single-threaded: nothing for TSan to find); the fuzz runs mutate from
# MSA_FUZZ_SEED (tools/test.sh draws and prints one per run; 1 when unset;
# replay: MSA_FUZZ_SEED=SEED ctest --test-dir build-asan -L fuzz). The crash test kills its
# child 5..60 ms after the start; sanitized children start and commit
# several times slower, so that window is stretched (MSA_CRASH_TEST_SLOWDOWN:
# 4x under ASan, 10x under TSan); the power-loss test runs 100 (ASan) and 60
# (TSan) of its 200 iterations, which take about 4 minutes under TSan. Any report
# fails its test: UBSan is built with -fno-sanitize-recover, ASan and TSan
# halt on the first error.
#
# Not instrumented, so not checked: the system libraries (RocksDB, FAISS and
# its OpenMP runtime, zstd, liburing). Their lock-free internals synchronise
# in ways TSan cannot see: tools/tsan.supp silences reports from inside them
# (never from msa's code), and FAISS runs with OMP_NUM_THREADS=1 under TSan.
# ignore_noninstrumented_modules=1: memcpy and friends called from such a
# library are not checked either -- a RocksDB compaction thread copying a
# block the opening thread had cached was reported with stacks that end in
# libstdc++, which no suppression can name.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=${MSA_SANITIZER_JOBS:-2}
kinds=("$@")
((${#kinds[@]})) || kinds=(asan tsan)

run_kind() {
  local kind=$1 dir sanitize
  local -a ctest_args=(--output-on-failure -j "$jobs")
  local slowdown power_losses
  case "$kind" in
    asan) dir=build-asan; sanitize=address,undefined; slowdown=4; power_losses=100 ;;
    tsan) dir=build-tsan; sanitize=thread; slowdown=10; power_losses=60; ctest_args+=(-LE fuzz) ;;
    *) echo "test_sanitizers: unknown kind '$kind' (asan, tsan)" >&2; return 2 ;;
  esac
  echo "== $kind: configure and build $dir" >&2
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMSA_SANITIZE="$sanitize" \
        -DMSA_WITH_CUDA=OFF ${MSA_CMAKE_ARGS:-} >/dev/null
  cmake --build "$dir" -j "$jobs"
  echo "== $kind: ctest ${ctest_args[*]}" >&2
  local start=$SECONDS
  local -a env_vars=(
    "ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}"
    "UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
    "TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=$PWD/tools/tsan.supp}"
    "MSA_CRASH_TEST_SLOWDOWN=${MSA_CRASH_TEST_SLOWDOWN:-$slowdown}"
    "MSA_POWER_LOSS_ITERATIONS=${MSA_POWER_LOSS_ITERATIONS:-$power_losses}")
  [ "$kind" = tsan ] && env_vars+=(OMP_NUM_THREADS=1)
  env "${env_vars[@]}" ctest --test-dir "$dir" "${ctest_args[@]}"
  echo "== $kind: passed in $((SECONDS - start)) s" >&2
}

for kind in "${kinds[@]}"; do run_kind "$kind"; done
