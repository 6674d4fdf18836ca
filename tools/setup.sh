#!/usr/bin/env bash
# Installs the Debian packages msa needs (only those missing) and builds it
# into build/. Used by tools/demo.sh and tools/test.sh; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake g++ pkg-config librocksdb-dev liburing-dev libfaiss-dev libopenblas-dev libzstd-dev
          libspdlog-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev
          nlohmann-json3-dev libxxhash-dev
          python3-numpy   # numpy: the .npy interoperability tests, the Python package
          python3-pytest) # the Python package's tests (ctest python_tests)
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

# The Python package (python/msa, over build/libmsa.so): importable by
# Debian's /usr/bin/python3 and by the python3 on PATH (pyenv's, say) through
# msa-python.pth, naming python/, in each one's user site-packages. Debian's
# interpreter has numpy from python3-numpy; another one gets it from PyPI
# (into its own site-packages, never the user site both may share).
for py in /usr/bin/python3 "$(command -v python3 || true)"; do
  [ -x "$py" ] || continue
  site=$("$py" -m site --user-site 2>/dev/null) || continue
  mkdir -p "$site" && echo "$PWD/python" > "$site/msa-python.pth"
  if ! "$py" -c 'import numpy' 2>/dev/null && [ "$py" != /usr/bin/python3 ]; then
    "$py" -m pip install --quiet numpy >&2 ||
      echo "setup: $py has no numpy, which msa's Python package needs ($py -m pip install numpy)" >&2
  fi
done
