# adchain: `make demo` runs the whole chain with a short load; `make test` runs the tests.
# Both create the virtual environment .venv on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
GENERATED := adchain/v1/.generated
PROTOS := $(wildcard protos/adchain/v1/*.proto)

# Slow end-to-end and fault tests run under CI (CI=true) and with `make test-all`.
ifeq ($(CI),true)
PYTEST_SELECT :=
else
PYTEST_SELECT := -m "not slow"
endif

.PHONY: demo test test-all bench bench-chain bench-restart lint gen clean

demo: $(INSTALLED) $(GENERATED)
	$(PY) -m services demo

test: $(INSTALLED) $(GENERATED)
	$(PY) -m pytest $(PYTEST_SELECT) -q

test-all: $(INSTALLED) $(GENERATED)
	$(PY) -m pytest -q

bench: $(INSTALLED) $(GENERATED)
	$(PY) -m pricing_core.bench

# The chain as a system: every role's RPCs, batches, end to end (ARGS=--json for one object).
bench-chain: $(INSTALLED) $(GENERATED)
	$(PY) -m loadtest.bench_chain $(ARGS)

# Each role's start on a ledger of 5M events against an empty one (ARGS=--events N, --json).
bench-restart: $(INSTALLED) $(GENERATED)
	$(PY) -m loadtest.bench_restart $(ARGS)

lint: $(INSTALLED)
	$(VENV)/bin/buf lint

gen: $(GENERATED)

# The editable install maps each top-level package to its folder, so the
# generated adchain/ package must exist when it runs: install the dependencies,
# generate, then install the project again to map adchain/ too.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) scripts/genproto.py
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# Regenerated whenever a .proto (or the generator) is newer; never committed.
$(GENERATED): $(PROTOS) scripts/genproto.py $(INSTALLED)
	rm -rf adchain
	$(PY) scripts/genproto.py
	touch $@

clean:
	rm -rf adchain .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
