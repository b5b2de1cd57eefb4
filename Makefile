# Energo — the two commands are `make run` and `make test`; both set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.energo-installed
NODE_STAMP := node_modules/.energo-installed
PYTEST_ARGS ?=

.PHONY: setup run test soak bench lint flash clean

CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

setup: $(PY_STAMP) $(NODE_STAMP) $(CHROMIUM)

$(PY_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Debian's Chromium for the dashboard's browser test (driven by Playwright, which downloads no
# browser of its own). Runs only while the binary is missing.
$(CHROMIUM):
	@if command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium (the dashboard's browser test)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq >/dev/null && \
		  $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; \
	else \
		echo "note: no apt-get here; install Chromium as $(CHROMIUM) for the browser test"; \
	fi

run: setup
	$(BIN)/energo sim community

test: setup lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

soak: setup
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lint: $(PY_STAMP)
	$(BIN)/ruff check .

BENCHES ?= sign accuracy firmware-mem match emulator handshake

bench: setup
	@for name in $(BENCHES); do echo "== energo bench $$name"; $(BIN)/energo bench $$name --json || exit 1; done

flash: setup
	@test -n "$(PORT)" -a -n "$(BOARD)" || { echo "usage: make flash PORT=/dev/ttyUSB0 BOARD=boards/NAME.json"; exit 2; }
	$(BIN)/energo flash --port $(PORT) --board $(BOARD)

clean:
	rm -rf $(VENV) node_modules out .pytest_cache .hypothesis
