#!/usr/bin/env bash
# The headline table of docs/RESULTS.md: ZsRE, 50 records, single mode, teacher-forced (EasyEdit) and
# generated-answer metrics side by side, for every registered method (`editwrap methods`); WikiData_recent /
# WikiData_counterfact 50 for the methods of the `main-other` suite. A method with a trained artifact
# (SERAC, MEND) is trained here first with the evaluated records held out; one that reads training records
# at edit time (IKE's pool) gets the ZsRE train split.
# Runs resume where they stopped; wall time per run goes to $OUT/walltimes.tsv.
# Then: editwrap report $OUT --out docs/results/main --cases 5   (or python benchmarks/readme_results.py)
# Usage: [OTHER_METHODS=m1,m2] bash benchmarks/main_table.sh [methods]   (default: all of them, in table order)
# Data by name (docs/data.md): the KnowEdit files from the Hugging Face Hub dataset zjunlp/KnowEdit
# (run `editwrap data knowedit` once first: the jobs run with HF_HUB_OFFLINE=1) or a local copy in
# $EDITWRAP_DATA_DIR. Training pools: TRAIN_POOL for SERAC/MEND (default knowedit:ZsRE, the evaluated
# records held out) and IKE_POOL (default zsre_mend:train, published on ROME's data site, not the Hub).
set -u
TRAIN_POOL=${TRAIN_POOL:-knowedit:ZsRE}
IKE_POOL=${IKE_POOL:-zsre_mend:train}
OUT=${OUT:-results/main}
ART=${ART:-art}
N=${N:-50}
PY=${PYTHON:-python}
OTHER_METHODS=${OTHER_METHODS-$($PY -m editwrap.methods --names --suite main-other)}   # "" = none
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
run() {  # label, command...
  local label=$1; shift
  local t0=$(date +%s)
  "$@" >> "$OUT/$label.log" 2>&1
  echo -e "$label\t$?\t$(( $(date +%s) - t0 ))\t$(date -Is)" >> "$OUT/walltimes.tsv"
}
ev() { editwrap eval knowedit --n "$N" --out "$OUT" --no-progress "$@"; }
# one line per method: name, the hyperparameter naming its trained artifact, the one naming a
# training-records file it reads at edit time ("-": none)
$PY -m editwrap.methods --fields name,artifact_field,records_field ${1:+--only "$1"} > "$OUT/methods.tsv" || exit 1
while read -r m artifact records <&3; do
  if [ "$artifact" != - ]; then
    ls "$ART/$m-zsre"/*.json > /dev/null 2>&1 || \
      run train-$m editwrap train $m --data "$TRAIN_POOL" --exclude knowedit:ZsRE --exclude-n "$N" --out "$ART/$m-zsre" \
          $([ $m = mend ] && echo --steps 300)
    run zsre-$m ev --dataset zsre --data knowedit:ZsRE --method $m --trained-on "$ART/$m-zsre"
  elif [ "$records" != - ]; then
    run zsre-$m ev --dataset zsre --data knowedit:ZsRE --method $m --hparam "$records=$IKE_POOL"
  else
    run zsre-$m ev --dataset zsre --data knowedit:ZsRE --method $m
  fi
done 3< "$OUT/methods.tsv"
for m in ${OTHER_METHODS//,/ }; do
  run recent-$m ev --dataset recent --data knowedit:WikiData_recent --method $m
  run counterfact-$m ev --dataset counterfact --data knowedit:WikiData_counterfact --method $m
done
