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

.PHONY: all run demo bench bench-commit report html test test-slow venv clean gpu-check wheels

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

## On a GPU machine without network: GPU tests, compute-sanitizer, speed table and asv GPU
## benchmarks; logs and numbers go to OUT (default results/gpu-check/<UTC time>).
## Uses whatever Python has CuPy/torch/pytest, installing what is missing from wheels/.
gpu-check:
	bash tools/gpu_check.sh $(OUT)

## Download the wheels gpu-check installs offline (GPULSTM_WHEEL_PY, GPULSTM_CUDA_MAJOR).
wheels:
	bash tools/download_wheels.sh
