# gpulstm: every target sets up the project virtual environment when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(EXTRAS)
EXTRAS ?= test

.PHONY: all run demo test test-slow venv clean

all: run

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $@

venv: $(STAMP)

## The main job (the README's first command).
run: $(STAMP)
	$(PY) -m gpulstm.demo

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
