# Each target sets up .venv itself (Python >= 3.11; override with PYTHON=python3.12).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Two workers, each test file kept on one worker: a file's compiled programs and module fixtures
# (quick experiment runs) are built once, not once per worker.
PYTEST_ARGS ?= -n 2 --dist loadfile
# The suite runs with the glibc malloc settings that the `python -m experiments.*` and
# `benchmarks.*` entry points give themselves (mljax/malloc_tuning.py), so XLA:CPU's buffers
# stop page-faulting: the whole suite with a warm compilation cache took 327-336 s without
# them and 305 s with them on 2 cores. `python -m mljax.malloc_tuning` prints the setting (or
# nothing where malloc settings of your own or MLJAX_MALLOC_TUNING=0 are in the environment).
TEST_ENV = env $$($(PY) -m mljax.malloc_tuning)

.PHONY: demo test test-fast test-x64 lint format bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test]"
	@touch $@ $(VENV)/.installed-base

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test,bench]"
	@touch $@ $(VENV)/.installed-test $(VENV)/.installed-base

install: $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(PY) -m experiments.reproduce --quick --out results/reproduce
	@echo "Report: results/reproduce/REPORT.md (each experiment's figures in results/reproduce/<name>/)"

# The whole suite (CI runs this), printing the 15 slowest tests.
test: $(VENV)/.installed-test
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) --durations=15

# Everything but the slow tier (tests marked `slow`): the suite to run while you work.
test-fast: $(VENV)/.installed-test
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) -m "not slow"

# The whole suite with 64-bit floats enabled everywhere (gradient and EM tests already use x64).
test-x64: $(VENV)/.installed-test
	$(TEST_ENV) JAX_ENABLE_X64=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.installed-test
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(VENV)/.installed-bench
	@for m in $$(ls benchmarks/*.py 2>/dev/null | xargs -n1 basename | sed 's/\.py$$//' | grep -v '^_'); do \
	  echo "== benchmarks.$$m"; $(PY) -m benchmarks.$$m --out results/bench/$$m.json || exit 1; \
	done

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache .hypothesis
