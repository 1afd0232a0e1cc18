# One command sets up and runs: every target creates the virtualenv first if it is missing or stale.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The protocol's 300 epochs shortened to 50, so the demo takes about 2 minutes on 2 cores.
demo: $(STAMP)
	$(VENV)/bin/raydistill run --ipc 10 --out runs/demo --set train.epochs=50

test: $(STAMP)
	$(PY) -m pytest -q --durations=10 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	bash benchmarks/run.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
