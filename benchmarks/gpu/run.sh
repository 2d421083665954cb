#!/usr/bin/env bash
# The GPU benchmark suite on any CUDA machine, after `make install` (docs/gpu.md):
#
#   bash benchmarks/gpu/run.sh [options] [SUITE...]
#
# Suites (default: knowedit sequential quant adapters):
#   smoke       the logic tests on the GPU (EDITWRAP_TEST_DEVICE=cuda pytest, tiny models)
#   knowedit    the gpu-knowedit methods (ROME, MEMIT) on 50 records of each KnowEdit dataset, single
#               mode (--fluency on the fact datasets); FTL_DATASETS=zsre,wikibio,... adds FT-L runs
#   sequential  mixed ZsRE/recent/counterfact, ROME, 100 sequential edits (checkpoints 10,25,50,100)
#   quant       ZsRE, 50 records: the gpu-quant methods (ROME, MEMIT, FT-M, LoRA) on the 8-bit
#               (bitsandbytes) model, and in fp32 those the knowedit suite does not run
#   adapters    the gpu-adapters methods (GRACE, WISE, AdaLoRA), 200 sequential ZsRE edits (full ZsRE;
#               checkpoints 10,50,100,200)
#   all         every suite above but smoke
# A method joins a suite by naming it in its `suites` (python -m editwrap.methods --suite NAME lists them).
#
# Options:
#   --dry-run         print the commands, run nothing (no GPU needed)
#   --parallel N      jobs at once on the GPU (default 4; one process each)
#   --mps             start the CUDA MPS daemon for the jobs (if not running) and stop it afterwards
#   --time-limit S    stop each job after S seconds; the next run resumes it
#   --data DIR        KnowEdit data folder with ZsRE.json, WikiBio.json, ... (default: data/knowedit of an
#                     offline bundle, else the dataset names knowedit:ZsRE, ... found in $EDITWRAP_DATA_DIR
#                     or the Hugging Face cache: `editwrap data knowedit` fetches them; docs/data.md)
#   --out DIR         results folder (default results/gpu)
#   --python PY       interpreter (default $PYTHON, else .venv/bin/python, else python3)
#
# Resuming: every job writes one JSONL line per record and a rerun of the same command skips the
# records already there (the KnowEdit runner checks data and model by content hash), so rerun
# run.sh after an interruption or a --time-limit. A job whose summary already covers all its
# records is skipped. Per job: OUT/<suite>/<label>.log; OUT/<suite>/walltimes.tsv (label, exit
# code, seconds, end time).
set -u
CALLER=$PWD
cd "$(dirname "$0")/../.."
ROOT=$PWD

DRY=0 PAR=4 MPS=0 LIMIT= DATA= OUTDIR=results/gpu PY=${PYTHON:-}
SUITES=()
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --parallel) PAR=${2:?--parallel N}; shift ;;
    --mps) MPS=1 ;;
    --time-limit) LIMIT=${2:?--time-limit SECONDS}; shift ;;
    --data) DATA=${2:?--data DIR}; shift ;;
    --out) OUTDIR=${2:?--out DIR}; shift ;;
    --python) PY=${2:?--python PY}; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    smoke|knowedit|sequential|quant|adapters) SUITES+=("$1") ;;
    all) SUITES+=(knowedit sequential quant adapters) ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#SUITES[@]} -gt 0 ] || SUITES=(knowedit sequential quant adapters)
case $PAR in ''|*[!0-9]*|0) echo "run.sh: --parallel needs a positive integer" >&2; exit 2 ;; esac
if [ -n "$LIMIT" ]; then
  case $LIMIT in *[!0-9]*|0) echo "run.sh: --time-limit needs a positive number of seconds" >&2; exit 2 ;; esac
fi
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python; else PY=python3; fi
fi
abs() { case $1 in /*) echo "$1" ;; *) echo "$CALLER/$1" ;; esac; }  # paths given relative to the caller
[ -z "$DATA" ] || DATA=$(abs "$DATA")
[ "$OUTDIR" = results/gpu ] || OUTDIR=$(abs "$OUTDIR")
case $PY in */*) PY=$(abs "$PY") ;; esac
[ -n "$DATA" ] || { [ -d data/knowedit ] && DATA=$PWD/data/knowedit; }  # else dataset names (docs/data.md)
case $DATA$OUTDIR in *[[:space:]]*) echo "run.sh: --data and --out paths must not contain spaces" >&2; exit 2 ;; esac
has() { local s; for s in "${SUITES[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

say() { printf '%s\n' "$*"; }
# run a command, or print it with --dry-run
show() {  # the command as one shell line (arguments quoted only where needed)
  local a sep=
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./,:=@%+-]+$ ]]; then printf '%s%s' "$sep" "$a"; else printf '%s%q' "$sep" "$a"; fi
    sep=' '
  done
}
doit() { if [ $DRY = 1 ]; then show "$@"; echo; else "$@"; fi; }

# ---- checks -------------------------------------------------------------------------------------
CHECK_CUDA='import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"no CUDA device visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); "
             "install a CUDA build of torch (docs/gpu.md)")
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "|", torch.cuda.get_device_name(), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
import transformers, peft; print("transformers", transformers.__version__, "| peft", peft.__version__)
import editwrap; print("editwrap", editwrap.__version__)'
if [ $DRY = 1 ]; then
  say "# dry run: suites ${SUITES[*]}; python $PY; data $DATA; results $OUTDIR; $PAR at once"
  doit "$PY" -c 'import torch; assert torch.cuda.is_available()'
else
  command -v "$PY" > /dev/null || [ -x "$PY" ] || { echo "run.sh: no python at '$PY'; run make install first" >&2; exit 1; }
  "$PY" -c "$CHECK_CUDA" || exit 1
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  if [ -z "$DATA" ] && { has knowedit || has sequential || has quant || has adapters; }; then
    "$PY" -c 'import sys
from editwrap.hub import resolve_data
try:
    [resolve_data(n) for n in sys.argv[1:]]
except (OSError, ValueError) as e:
    sys.exit(f"run.sh: {e}")' knowedit:ZsRE knowedit:WikiData_recent knowedit:WikiBio knowedit:WikiData_counterfact \
      knowedit:ConvSent knowedit:Sanitation || exit 1
  elif has knowedit || has sequential || has quant || has adapters; then
    missing=
    for f in ZsRE.json WikiData_recent.json WikiBio.json WikiData_counterfact.json ConvSent.json Sanitation.json; do
      [ -f "$DATA/$f" ] || missing="$missing $f"
    done
    if [ -n "$missing" ]; then
      echo "run.sh: KnowEdit data folder '$DATA' lacks:$missing (--data DIR, or no --data for dataset names; docs/gpu.md)" >&2
      exit 1
    fi
  fi
fi
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
NCPU=$(nproc 2> /dev/null || echo 1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( NCPU / PAR > 0 ? NCPU / PAR : 1 ))}

# ---- smoke: the logic tests on the GPU ----------------------------------------------------------
if has smoke; then
  say "== smoke: logic tests with EDITWRAP_TEST_DEVICE=cuda"
  xdist=()
  [ $DRY = 0 ] && "$PY" -c "import xdist" 2> /dev/null && xdist=(-n "$PAR")
  doit env EDITWRAP_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider -m "not slow" "${xdist[@]}" \
    tests/test_quant.py tests/test_core_stack.py tests/test_adapters.py tests/test_grace.py \
    tests/test_wise.py tests/test_evals_runner.py tests/test_evals_metrics.py || exit 1
fi

# ---- the job list -------------------------------------------------------------------------------
JOBS=()  # "out-folder|label|stem|args" (args separated by spaces; no spaces inside an argument)
add() { JOBS+=("$1|$2|$3|$4"); }
declare -A FILE=([zsre]=ZsRE [recent]=WikiData_recent [wikibio]=WikiBio
                 [counterfact]=WikiData_counterfact [convsent]=ConvSent [sanitation]=Sanitation)
src() { if [ -n "$DATA" ]; then echo "$DATA/${FILE[$1]}.json"; else echo "knowedit:${FILE[$1]}"; fi; }  # --data of a dataset
K=$OUTDIR/knowedit
suite() { "$PY" -m editwrap.methods --names --suite "$1" | tr , ' '; }  # the methods of a suite
if has knowedit; then
  for m in $(suite gpu-knowedit); do
    for d in zsre recent wikibio counterfact convsent sanitation; do
      flu=--fluency; { [ "$d" = convsent ] || [ "$d" = sanitation ]; } && flu=
      add "$K" "$d-$m" "$d-$m-single" "--dataset $d --data $(src $d) --method $m --n 50 $flu"
    done
  done
  FTL=${FTL_DATASETS:-}
  for d in ${FTL//,/ }; do
    [ -n "${FILE[$d]:-}" ] || { echo "run.sh: FTL_DATASETS: unknown dataset '$d'" >&2; exit 2; }
    flu=--fluency; { [ "$d" = convsent ] || [ "$d" = sanitation ]; } && flu=
    add "$K" "$d-ft-l" "$d-ft-l-single" "--dataset $d --data $(src $d) --method ft-l --n 50 $flu"
  done
fi
if has sequential; then
  add "$K" mixed-rome-seq mixed-rome-sequential \
      "--dataset mixed --data ${DATA:-knowedit} --method rome --mode sequential --n 100 --checkpoints 10,25,50,100"
fi
if has quant; then
  in_knowedit=" $(suite gpu-knowedit) "
  for m in $(suite gpu-quant); do
    add "$OUTDIR/quant/int8" "zsre-$m" "zsre-$m-single" "--dataset zsre --data $(src zsre) --method $m --n 50 --load-in-8bit"
    # fp32 beside it, unless the knowedit suite's ZsRE run is that number already
    [[ $in_knowedit == *" $m "* ]] || \
      add "$OUTDIR/quant/fp32" "zsre-$m" "zsre-$m-single" "--dataset zsre --data $(src zsre) --method $m --n 50"
  done
fi
if has adapters; then  # 200 ZsRE records: a folder's full/ZsRE.json when it has one
  ZPOOL=$(src zsre); [ -n "$DATA" ] && [ -f "$DATA/full/ZsRE.json" ] && ZPOOL=$DATA/full/ZsRE.json
  for m in $(suite gpu-adapters); do
    add "$OUTDIR/adapters" "zsre-$m-seq" "zsre-$m-sequential" \
        "--dataset zsre --data $ZPOOL --method $m --mode sequential --n 200 --checkpoints 10,50,100,200"
  done
fi
[ ${#JOBS[@]} -gt 0 ] || exit 0

# a job is done when its summary (written at the end of a run) covers the records of the last
# started run (its meta, written at the start)
DONE_PY='import json, sys
try:
    s, m = (json.load(open(f"{sys.argv[1]}.{x}.json")) for x in ("summary", "meta"))
except (OSError, ValueError):
    sys.exit(1)
sys.exit(0 if s.get("n") == m.get("n") and not s.get("in_progress") else 1)'
done_job() { [ -f "$1/$2.summary.json" ] && "$PY" -c "$DONE_PY" "$1/$2"; }

TODO=()
for j in "${JOBS[@]}"; do
  IFS='|' read -r out label stem _ <<< "$j"
  if done_job "$out" "$stem"; then say "done already: $out/$stem"; else TODO+=("$j"); fi
done
[ ${#TODO[@]} -gt 0 ] || { say "every job is done; results in $OUTDIR/"; exit 0; }

# ---- preparation: model conversion and covariance statistics once, before parallel jobs --------
say "== prepare: embedded model and covariance statistics (cached for the jobs)"
prep=(--device cuda)
has quant && prep+=(--int8)
doit "$PY" benchmarks/gpu/prepare.py "${prep[@]}" || exit 1

MPS_STARTED=0
if [ $MPS = 1 ]; then
  if [ $DRY = 1 ]; then
    doit nvidia-cuda-mps-control -d
  elif command -v nvidia-cuda-mps-control > /dev/null; then
    nvidia-cuda-mps-control -d && MPS_STARTED=1 && say "MPS daemon started" || say "MPS not started; jobs share the GPU without it"
  else
    say "nvidia-cuda-mps-control not found; jobs share the GPU without MPS"
  fi
fi
stop_mps() { if [ $MPS_STARTED = 1 ]; then echo quit | nvidia-cuda-mps-control && say "MPS daemon stopped"; MPS_STARTED=0; fi; }
# each job in its own process group (set -m), so an interrupt stops the jobs' Python processes too;
# their JSONL keeps every finished record and the next run resumes from there
set -m
stop_jobs() { local p; for p in $(jobs -p); do kill -TERM -- "-$p" 2> /dev/null; done; wait; }
trap 'say "interrupted; stopping the jobs (rerun to resume)"; stop_jobs; stop_mps; exit 130' INT TERM

# ---- the jobs -----------------------------------------------------------------------------------
tlimit=()
[ -n "$LIMIT" ] && tlimit=(timeout "$LIMIT")
run_job() {  # out label args...
  local out=$1 label=$2 s rc; shift 2
  mkdir -p "$out"; s=$(date +%s)
  "${tlimit[@]}" "$PY" -m editwrap.cli eval knowedit "$@" --device cuda --out "$out" --no-progress > "$out/$label.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$label" "$rc" "$(( $(date +%s) - s ))" "$(date -Is)" >> "$out/walltimes.tsv"
  case $rc in
    0) say "finished $out/$label ($(( $(date +%s) - s )) s)" ;;
    124) say "stopped at the time limit: $out/$label (rerun to resume)" ;;
    *) say "FAILED (exit $rc): $out/$label, see $out/$label.log" ;;
  esac
}
say "== ${#TODO[@]} jobs, $PAR at once, OMP_NUM_THREADS=$OMP_NUM_THREADS${LIMIT:+, at most $LIMIT s each}"
t0=$(date +%s)
for j in "${TODO[@]}"; do
  IFS='|' read -r out label stem args <<< "$j"
  read -r -a argv <<< "$args"
  if [ $DRY = 1 ]; then
    [ -n "$LIMIT" ] && printf 'timeout %s ' "$LIMIT"
    show "$PY" -m editwrap.cli eval knowedit "${argv[@]}" --device cuda --out "$out" --no-progress
    printf ' > %q\n' "$out/$label.log"
    continue
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$PAR" ]; do wait -n; done
  run_job "$out" "$label" "${argv[@]}" &
done
wait
stop_mps
[ $DRY = 1 ] && exit 0
say "== jobs ended in $(( $(date +%s) - t0 )) s; records written per run:"
rc=0
for j in "${JOBS[@]}"; do
  IFS='|' read -r out label stem _ <<< "$j"
  lines=0; [ -f "$out/$stem.jsonl" ] && lines=$(wc -l < "$out/$stem.jsonl")
  if done_job "$out" "$stem"; then st=done; else st="not finished (rerun to resume)"; rc=1; fi
  printf '  %-45s %6s lines  %s\n' "$out/$stem" "$lines" "$st"
done
say "reports: $OUTDIR/*/report.md (or: $PY -m editwrap.cli report $OUTDIR --out $OUTDIR/report)"
exit $rc
