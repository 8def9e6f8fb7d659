# gpulstm: every target sets up the project virtual environment when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
EXTRAS ?= test
## On a GPU machine the install adds the CuPy extra matching the CUDA driver (cuda12 / cuda13,
## found through libcuda or nvidia-smi; empty without a driver). Override: CUDA_EXTRA=none|cuda12|cuda13.
ifeq ($(origin CUDA_EXTRA),undefined)
CUDA_EXTRA := $(shell $(PYTHON) gpulstm/backends/cuda_driver.py 2>/dev/null)
endif
comma  := ,
ALL_EXTRAS = $(EXTRAS)$(if $(filter cuda12 cuda13,$(CUDA_EXTRA)),$(comma)$(CUDA_EXTRA))
STAMP   = $(VENV)/.installed-$(subst $(comma),-,$(ALL_EXTRAS))

.PHONY: all run demo bench bench-commit report html test test-slow venv clean gpu-check \
        gpu-check-dry gpu-import wheels

all: run

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -e ".[$(ALL_EXTRAS)]"
	touch $@

venv: $(STAMP)

## The main job (the README's first command): the quick asv suite on the best backend here
## (numpy on a CPU, cupy on a GPU) with one progress display, then the report comparing this
## run with the committed reference machines: terminal tables, .gpulstm/report/report.md,
## report.html and plots. Writes only under .gpulstm/ (ignored by git).
run: $(STAMP)
	$(PY) -m gpulstm.cli main --quick

## The asv suite only (quick grid), results in .gpulstm/results.
bench: $(STAMP)
	$(PY) -m gpulstm.cli bench --quick

## Maintainers: the quick suite into the tracked results/ (a clean tree, and a machine name
## that is this machine's; MACHINE=name to choose it), then commit results/ yourself.
bench-commit: $(STAMP)
	$(PY) -m gpulstm.cli bench --quick --commit-results $(if $(MACHINE),--machine $(MACHINE))

## The report only: your latest results (.gpulstm/results, when there are some) beside the
## committed reference machines (results/); into .gpulstm/report.
report: $(STAMP)
	$(PY) -m gpulstm.cli report

## asv's own web site of your results in .gpulstm/html (asv publish); browse it with
## `.venv/bin/python -m asv preview --html-dir .gpulstm/html` (a local web server).
html: $(STAMP)
	$(PY) -m gpulstm.cli html

## The test suite (CPU; GPU tests skip with their reason).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis

## LSTM forward + backward on the best backend here: shapes and timing.
demo: $(STAMP)
	$(PY) -m gpulstm.demo

## The prepared GPU check (docs/gpu.md): on a machine with an NVIDIA GPU, CuPy and torch (no
## network, no venv: GPU_PYTHON, default python3), at most ~5 minutes, at most 8 files into
## OUT (required; a new or empty folder). GPULSTM_COMMIT names the commit where the tree has
## no .git. Exit status 0 only when every section passed.
GPU_PYTHON ?= python3
gpu-check:
	@test -n "$(OUT)" || { echo "usage: make gpu-check OUT=<new folder> [GPULSTM_COMMIT=<sha>]"; exit 2; }
	PYTHONPATH=$(CURDIR) GPULSTM_COMMIT=$(GPULSTM_COMMIT) $(GPU_PYTHON) -m gpulstm.gpucheck run $(OUT)

## The same check on the CPU (the emulated kernels, small shapes, torch CPU for cuDNN, the
## sanitizer's cases without the sanitizer): writes the same files into OUT, nothing tracked.
gpu-check-dry: $(STAMP)
	@test -n "$(OUT)" || { echo "usage: make gpu-check-dry OUT=<new folder>"; exit 2; }
	$(PY) -m gpulstm.gpucheck run --dry $(OUT)

## A returned gpu-check folder into results/gpu/<card>-<commit>/ (COMMIT=<sha> where the run
## did not know it); the report's GPU section reads it from there. Commit results/ yourself.
gpu-import: $(STAMP)
	@test -n "$(FROM)" || { echo "usage: make gpu-import FROM=<returned folder> [COMMIT=<sha>]"; exit 2; }
	$(PY) -m gpulstm.gpucheck import $(FROM) --results $(CURDIR)/results $(if $(COMMIT),--commit $(COMMIT))

## Download the wheels gpu-check installs offline (GPULSTM_WHEEL_PY, GPULSTM_CUDA_MAJOR).
wheels:
	bash tools/download_wheels.sh
