# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pip arguments, e.g. PIP_ARGS="--extra-index-url <your torch CPU index>" off this machine.
PIP_ARGS ?=
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

# Debian's Chromium, for the report's test in a real headless browser (tests/e2e/test_report.py,
# driven by pip's playwright; playwright's own browser download is never used). Installed once.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test test-fast lint demo bench clean toyworld toyworld-eval toyworld-smoke browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_ARGS) torch==2.13.0
	$(BIN)/pip install -q $(PIP_ARGS) -e '.[cpu,services,trainer,dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

browser:
	@test -x $(CHROMIUM) || if command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "make browser: no apt-get here; install Chromium at $(CHROMIUM) for tests/e2e/test_report.py"; fi

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -q -p no:cacheprovider --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/python -m trainer demo --config configs/demo.toml --out runs/demo

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
