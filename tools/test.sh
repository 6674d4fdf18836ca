#!/usr/bin/env bash
# Set up (packages, build) and run the whole test suite.
#
# MSA_TEST_SANITIZERS="asan" (or "asan tsan", "tsan") then runs the suite
# again under those sanitizers (tools/test_sanitizers.sh: build-asan,
# build-tsan). CI sets asan (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
ctest --test-dir build --output-on-failure -j "$(nproc 2>/dev/null || echo 2)"
if [ -n "${MSA_TEST_SANITIZERS:-}" ]; then
  # shellcheck disable=SC2086  # a list of kinds
  bash tools/test_sanitizers.sh ${MSA_TEST_SANITIZERS}
fi
