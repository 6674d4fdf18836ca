#!/usr/bin/env bash
# Needle hits per KV head: msa eval with needles.json split by kv_head, on a run_eval.sh folder.
#
#   bash tools/realkv/per_head_eval.sh OUT [STORE_LAYER...]     (default: every layer)
#
# msa eval counts a needle once per (query, KV head); in a real model only the
# KV head that hosts a retrieval head looks for the passkey, so the per-head
# counts say whether any head's selection holds it. Writes
# OUT/eval_head/layer_J[_doc]_kvG.json; `summarize.py --per-head OUT` prints the table.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$1
shift
PY=${PY:-$HERE/.venv/bin/python}
MSA=${MSA:-$HERE/../../build/msa}
TOP_K=${TOP_K:-16}
mkdir -p "$OUT/eval_head"
kv=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['kv_heads'])" "$OUT/kv/geometry.json")
n=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['layers'])" "$OUT/kv/geometry.json")
"$PY" - "$OUT" "$kv" <<'PY'
import json, sys
out, kv = sys.argv[1], int(sys.argv[2])
n = json.load(open(f"{out}/kv/needles.json"))
for g in range(kv):
    json.dump([x for x in n if x["kv_head"] == g], open(f"{out}/eval_head/needles_kv{g}.json", "w"))
PY
layers=("$@")
[ ${#layers[@]} -gt 0 ] || layers=($(seq 0 $((n - 1))))
for j in "${layers[@]}"; do
  for ((g = 0; g < kv; g++)); do
    for set in "" _doc; do
      [ -f "$OUT/kv/queries${set}_l$j.npy" ] || continue
      "$MSA" eval "$OUT/store" --layer "$j" --queries "$OUT/kv/queries${set}_l$j.npy" \
        --needles "$OUT/eval_head/needles_kv$g.json" --top-k "$TOP_K" --repeats 1 --exact-samples 0 \
        --json > "$OUT/eval_head/layer_${j}${set}_kv$g.json"
    done
  done
  echo "per-head eval layer $j done"
done
