#!/usr/bin/env bash
# Set up (packages, build) and run the whole test suite.
#
# Then the suite runs again under the sanitizers in MSA_TEST_SANITIZERS
# (tools/test_sanitizers.sh: build-asan, build-tsan); the default is "asan
# tsan" (ASan+UBSan, then TSan), so this command is exactly what CI runs
# (.ci/run). Set it empty for the plain suite only, or to one of them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# The fuzz smoke runs (ctest fuzz_*) mutate from this seed: a new one each
# run, so that CI does not repeat the same inputs; printed here and by each
# run, so that a failure can be replayed with the same MSA_FUZZ_SEED.
export MSA_FUZZ_SEED=${MSA_FUZZ_SEED:-$(( (RANDOM << 15) | RANDOM ))}
echo "== fuzz smoke seed: MSA_FUZZ_SEED=$MSA_FUZZ_SEED (replay: MSA_FUZZ_SEED=$MSA_FUZZ_SEED ctest --test-dir build -L fuzz)" >&2
ctest --test-dir build --output-on-failure -j "$(nproc 2>/dev/null || echo 2)"
sanitizers=${MSA_TEST_SANITIZERS-asan tsan}
if [ -n "$sanitizers" ]; then
  # shellcheck disable=SC2086  # a list of kinds
  bash tools/test_sanitizers.sh $sanitizers
fi
