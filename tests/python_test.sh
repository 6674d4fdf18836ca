#!/usr/bin/env bash
# The python_* ctests: the msa package of this checkout over the libmsa.so
# that ctest built.
#   python_test.sh LIBRARY pytest DIR      # pytest DIR
#   python_test.sh LIBRARY script FILE     # run FILE (an example)
# The interpreter is MSA_TEST_PYTHON, else /usr/bin/python3 (Debian's, with
# python3-numpy and python3-pytest from tools/setup.sh), else python3.
# Exits 77, which ctest reports as skipped, saying why, when the interpreter
# lacks numpy or pytest.
set -euo pipefail
library=$1 mode=$2 target=$3
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${MSA_TEST_PYTHON:-/usr/bin/python3}
[ -x "$python" ] || python=$(command -v python3) || { echo "SKIP: no python3 found"; exit 77; }
skip_without() {
  "$python" -c "import $1" 2>/dev/null && return
  echo "SKIP: $python has no $1 module (apt-get install python3-$1; tools/setup.sh installs it)"
  exit 77
}
skip_without numpy
export MSA_LIBRARY=$library PYTHONPATH=$repo/python${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1
unset MSA_LOG_LEVEL  # the tests check the default level
case $mode in
  pytest) skip_without pytest; exec "$python" -m pytest -q -p no:cacheprovider "$target" ;;
  script) exec "$python" "$target" ;;
  *) echo "python_test.sh: unknown mode $mode" >&2; exit 2 ;;
esac
