#!/usr/bin/env bash
# Real K/V end to end: corpus -> SmolLM2-135M export -> msa create/ingest -> msa eval per layer.
#
#   bash tools/realkv/run_eval.sh [TOKENS] [OUT]
#
# TOKENS: token budget of the corpus (default 50000; about 6-15 s per 1K tokens
# of numpy forward on a 2-core VM, all 30 layers). OUT: output folder (default
# tools/realkv/out/run-TOKENS; removed and rebuilt). Environment:
#   LAYERS=all|0,5,10-12   model layers exported (store layer j = j-th of them)
#   TOP_K=16               msa eval --top-k
#   PASSKEYS=16            planted passkeys (2 query texts each)
#   MAX_TOKENS=2048        tokens per document at most
#   DEVICE=numpy|cpu|cuda  forward backend for the documents (cpu/cuda need torch)
#   ANSWERS=1              greedy answers with no memory / with the passkey's document (0: skip)
#   KEEP=0                 1: keep the K/V files in OUT/kv (for sinks.py; 23 KB per token)
#   PY, MSA                the Python of tools/realkv/setup.sh, the msa binary (build/msa)
#   PLOT_PY=python3        a Python with matplotlib for plot_eval.py (e.g. /usr/bin/python3); plots are skipped without it
# Writes OUT/corpus.json, OUT/kv/ (queries, needles, token ids), OUT/store,
# OUT/eval/layer_J.json (msa eval --json, the no-memory queries),
# OUT/eval/layer_J_doc.json (the queries formed with the passkey's document in
# context), OUT/summary.md (the tables) and OUT/plots/*.png (plot_eval.py --run-only).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOKENS=${1:-50000}
OUT=${2:-$HERE/out/run-$TOKENS}
PY=${PY:-$HERE/.venv/bin/python}
MSA=${MSA:-$ROOT/build/msa}
LAYERS=${LAYERS:-all}
TOP_K=${TOP_K:-16}
PASSKEYS=${PASSKEYS:-16}
MAX_TOKENS=${MAX_TOKENS:-2048}
DEVICE=${DEVICE:-numpy}
ANSWERS=${ANSWERS:-1}
KEEP=${KEEP:-0}
[ -x "$PY" ] || { echo "run_eval: $PY missing: run 'bash tools/realkv/setup.sh' first" >&2; exit 2; }
[ -x "$MSA" ] || { echo "run_eval: $MSA missing: build msa first (cmake --build build)" >&2; exit 2; }
rm -rf "$OUT"
mkdir -p "$OUT/eval"
extra=()
[ "$ANSWERS" = 1 ] && extra+=(--answers)
[ "$KEEP" = 1 ] && extra+=(--keep)
t0=$(date +%s)
nice -n 19 "$PY" "$HERE/corpus.py" --out "$OUT/corpus.json" --tokens "$TOKENS" \
  --max-tokens "$MAX_TOKENS" --passkeys "$PASSKEYS"
nice -n 19 "$PY" "$HERE/export.py" --corpus "$OUT/corpus.json" --out "$OUT/kv" --layers "$LAYERS" \
  --device "$DEVICE" --ingest "$OUT/store" --msa "$MSA" ${extra[@]+"${extra[@]}"}
t1=$(date +%s)
"$MSA" stats "$OUT/store"
n=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['layers'])" "$OUT/kv/geometry.json")
for ((j = 0; j < n; j++)); do
  for set in "" _doc; do
    "$MSA" eval "$OUT/store" --layer "$j" --queries "$OUT/kv/queries${set}_l$j.npy" \
      --needles "$OUT/kv/needles.json" --top-k "$TOP_K" --json > "$OUT/eval/layer_$j$set.json"
  done
  echo "eval layer $j done"
done
t2=$(date +%s)
"$PY" "$HERE/summarize.py" "$OUT" | tee "$OUT/summary.md"
"${PLOT_PY:-python3}" "$HERE/plot_eval.py" --run "$OUT" --run-only --out "$OUT/plots" ||
  echo "run_eval: plots skipped (plot_eval.py needs matplotlib: PLOT_PY=/usr/bin/python3)" >&2
echo "run_eval: corpus+export+ingest $((t1 - t0)) s, eval $((t2 - t1)) s; results in $OUT"
