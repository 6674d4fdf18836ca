#!/usr/bin/env bash
# Document sinks against plain routing, per layer: `msa eval` on a run_eval.sh folder's store
# and queries, three settings on the same queries and the same dense reference.
#
#   bash tools/realkv/doc_sinks_eval.sh RUN STORE DEST [STORE_LAYER...]   (default: every layer)
#
# RUN: a run_eval.sh folder (read only: kv/queries*_l<j>.npy, kv/needles.json);
# STORE: its store (or a copy); DEST: where the JSON goes. Settings:
#   top<K>        --top-k K (TOP_K, default 16): the stream's sink + recent + K routed
#   top<K>_ds     --top-k K --document-sinks: also every document's first block
#   top<W>        --top-k W (WIDE, default 43): plain routing with about the blocks top<K>_ds reads
# Writes DEST/layer_J[_doc]_SETTING.json and prints the table (doc_sinks_eval.py DEST).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RUN=$1 STORE=$2 DEST=$3
shift 3
PY=${PY:-$HERE/.venv/bin/python}
MSA=${MSA:-$HERE/../../build/msa}
TOP_K=${TOP_K:-16}
WIDE=${WIDE:-43}
mkdir -p "$DEST"
n=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['layers'])" "$RUN/kv/geometry.json")
layers=("$@")
[ ${#layers[@]} -gt 0 ] || layers=($(seq 0 $((n - 1))))
for j in "${layers[@]}"; do
  for set in "" _doc; do
    q="$RUN/kv/queries${set}_l$j.npy"
    common=(eval "$STORE" --layer "$j" --queries "$q" --needles "$RUN/kv/needles.json" --repeats 1
            --exact-samples 0 --json)
    "$MSA" "${common[@]}" --top-k "$TOP_K" > "$DEST/layer_${j}${set}_top${TOP_K}.json"
    "$MSA" "${common[@]}" --top-k "$TOP_K" --document-sinks > "$DEST/layer_${j}${set}_top${TOP_K}_ds.json"
    "$MSA" "${common[@]}" --top-k "$WIDE" > "$DEST/layer_${j}${set}_top${WIDE}.json"
  done
  echo "doc-sinks eval layer $j done"
done
"$PY" "$HERE/doc_sinks_eval.py" "$DEST" --settings "top${TOP_K},top${TOP_K}_ds,top${WIDE}"
