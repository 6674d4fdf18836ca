#!/usr/bin/env bash
# Installs the Debian packages msa needs (only those missing) and builds it
# into build/. Used by tools/demo.sh and tools/test.sh; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake g++ pkg-config librocksdb-dev liburing-dev libfaiss-dev libopenblas-dev libzstd-dev
          libspdlog-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev
          nlohmann-json3-dev libxxhash-dev
          python3-numpy)  # numpy: the .npy interoperability tests
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo ${MSA_CMAKE_ARGS:-} >/dev/null
cmake --build build -j "$jobs"
