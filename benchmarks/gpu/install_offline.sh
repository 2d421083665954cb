#!/usr/bin/env bash
# Install editwrap from an offline bundle (benchmarks/gpu/bundle.sh) without package access:
# a .venv in this folder that sees the system's packages (its CUDA torch), the bundle's wheels at
# the versions they were bundled with, and editwrap itself from this checkout (editable).
#
#   bash benchmarks/gpu/install_offline.sh [--dry-run] [--python PY]
#
# Then: bash benchmarks/gpu/run.sh (it uses .venv/bin/python and finds data/knowedit).
set -u
cd "$(dirname "$0")/../.."
DRY=0 PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --python) PY=${2:?--python PY}; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install_offline.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
W=wheels
doit() { if [ $DRY = 1 ]; then echo "$*"; else "$@" || { echo "install_offline.sh: failed: $*" >&2; exit 1; }; fi; }

if [ $DRY = 0 ]; then
  [ -f "$W/requirements.txt" ] || { echo "install_offline.sh: no $W/requirements.txt here; unpack a bundle made by benchmarks/gpu/bundle.sh" >&2; exit 1; }
  if ! grep -q -i '^torch==' "$W/requirements.txt" && ! "$PY" -c "import torch" 2> /dev/null; then
    echo "install_offline.sh: $PY has no torch and the bundle none either (bundle.sh --with-torch)" >&2; exit 1
  fi
fi
doit "$PY" -m venv --system-site-packages .venv
P=.venv/bin/python
doit "$P" -m pip install -q --no-index --find-links "$W" --upgrade pip setuptools wheel
doit "$P" -m pip install -q --no-index --find-links "$W" -r "$W/requirements.txt"
doit "$P" -m pip install -q --no-index --find-links "$W" --no-deps --no-build-isolation -e .
[ $DRY = 1 ] && exit 0
"$P" -c "import torch, editwrap; print('editwrap', editwrap.__version__, '| torch', torch.__version__, '| CUDA', torch.cuda.is_available())"
echo "next: bash benchmarks/gpu/run.sh --help"
