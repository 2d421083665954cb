#!/usr/bin/env bash
# The KnowEdit table of docs/RESULTS.md: ROME, MEMIT, FT-L, FT-M on 50 records of each fact dataset
# (WikiData_recent, ZsRE, WikiBio, WikiData_counterfact) and of the ConvSent and Sanitation
# samples, single mode, with fluency; then the 100-edit sequential mixed run for ROME and FT-L.
# Every run resumes where it stopped, so rerunning this script after an interruption finishes it.
# Wall time per run goes to $OUT/walltimes.tsv.  Usage: bash benchmarks/knowedit_table.sh [methods] [datasets]
# The methods default to the `knowedit-table` suite, the sequential run to the `knowedit-sequential` suite
# (python -m editwrap.methods --names --suite NAME lists them).
# Data by name (docs/data.md): the KnowEdit test files from the Hugging Face Hub dataset zjunlp/KnowEdit
# (run `editwrap data knowedit` once first: the jobs run with HF_HUB_OFFLINE=1), or a local copy in $EDITWRAP_DATA_DIR.
set -u
OUT=${OUT:-results/knowedit}
PY=${PYTHON:-python}
METHODS=${1:-$("$PY" -m editwrap.methods --names --suite knowedit-table)} || exit 1
SEQ_METHODS=$("$PY" -m editwrap.methods --names --suite knowedit-sequential) || exit 1
DATASETS=${2:-zsre,recent,wikibio,counterfact,convsent,sanitation}
N=${N:-50}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT"
declare -A FILE=([zsre]=ZsRE [recent]=WikiData_recent [wikibio]=WikiBio
                 [counterfact]=WikiData_counterfact [convsent]=ConvSent [sanitation]=Sanitation)
run() {  # label, args...
  local label=$1; shift
  local t0=$(date +%s)
  editwrap eval knowedit "$@" --out "$OUT" --no-progress >> "$OUT/$label.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$label" "$rc" "$(( $(date +%s) - t0 ))" "$(date -Is)" >> "$OUT/walltimes.tsv"
}
for m in ${METHODS//,/ }; do
  for d in ${DATASETS//,/ }; do
    flu=--fluency; [ "$d" = convsent ] || [ "$d" = sanitation ] && flu=
    run "$d-$m" --dataset "$d" --data "knowedit:${FILE[$d]}" --method "$m" --n "$N" $flu
  done
done
if [ "${SEQUENTIAL:-1}" = 1 ]; then
  for m in ${SEQ_METHODS//,/ }; do
    run "mixed-$m-seq" --dataset mixed --data knowedit --method "$m" --mode sequential --n 100 --checkpoints 10,25,50,100
  done
fi
