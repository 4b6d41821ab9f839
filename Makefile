# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pip arguments, e.g. PIP_ARGS="--extra-index-url <your torch CPU index>" off this machine.
PIP_ARGS ?=
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test test-fast lint demo bench clean toyworld toyworld-eval toyworld-smoke

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_ARGS) torch==2.13.0
	$(BIN)/pip install -q $(PIP_ARGS) -e '.[cpu,services,trainer,dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -q -p no:cacheprovider --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/python -m trainer demo --out runs/demo

bench: $(STAMP)
	$(BIN)/python -m bench.transport
	$(BIN)/python -m bench.batching
	$(BIN)/python -m bench.surrogate

toyworld: $(STAMP)
	$(BIN)/python -m toyworld build

toyworld-eval: $(STAMP)
	$(BIN)/python -m toyworld evaluate --grids docs/img

toyworld-smoke: $(STAMP)
	$(BIN)/python -m toyworld build --quick

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
