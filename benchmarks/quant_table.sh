#!/usr/bin/env bash
# fp32 vs 8-bit (bitsandbytes LLM.int8, CPU backend here, CUDA where present) on the first 50 ZsRE
# records, single mode, through the KnowEdit runner: Edit Succ., rephrase, portability, locality,
# s/edit, peak memory, pop verified bit-exact on every record (int8 data and scales included in the
# state-dict hash). Resumable; rerun after an interruption. Table: editwrap report $OUT/fp32 $OUT/int8
# Usage: bash benchmarks/quant_table.sh [methods] [modes]   (methods default to the `gpu-quant` suite's)
# Data: knowedit:ZsRE (docs/data.md): run `editwrap data knowedit --only ZsRE` once first (the jobs run with
# HF_HUB_OFFLINE=1), or point $EDITWRAP_DATA_DIR at a local copy.
set -u
OUT=${OUT:-results/quant}
PY=${PYTHON:-python}
METHODS=${1:-$("$PY" -m editwrap.methods --names --suite gpu-quant)} || exit 1
MODES=${2:-int8,fp32}
N=${N:-50}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
for mode in ${MODES//,/ }; do
  mkdir -p "$OUT/$mode"
  flag=; [ "$mode" = int8 ] && flag=--load-in-8bit
  for m in ${METHODS//,/ }; do
    t0=$(date +%s)
    editwrap eval knowedit --dataset zsre --data knowedit:ZsRE --method "$m" --n "$N" $flag \
      --out "$OUT/$mode" --no-progress > "$OUT/$mode/zsre-$m.log" 2>&1
    printf '%s\t%s\t%s\t%s\n' "$mode-$m" "$?" "$(( $(date +%s) - t0 ))" "$(date -Is)" >> "$OUT/walltimes.tsv"
  done
done
editwrap report "$OUT/fp32" "$OUT/int8" --out "$OUT" --title "fp32 vs 8-bit editing" > /dev/null
