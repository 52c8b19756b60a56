# The two commands: `make demo` and `make test`. Both set themselves up.
# bash with pipefail: a failing step of a pipeline fails the target.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Real third-party programs the tests run (Debian package names).
SYSTEM_PACKAGES := redis-server mosquitto mosquitto-clients nginx apache2 openssl curl gcc mosquitto-dev libmosquitto-dev libssl-dev strongswan-pki libstrongswan-standard-plugins chromium \
	softhsm2 postgresql haproxy redis-sentinel iproute2

.PHONY: test demo lint typecheck imports unit system-deps venv clean screenshots

test: venv system-deps lint typecheck imports
	$(BIN)/pytest --durations=20

demo: venv
	@echo "== fleet-sim demo: 20 simulated devices (seconds) =="
	$(BIN)/fleet-sim demo

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is needed (found $$($(PYTHON) --version))"; exit 1; }
	@echo "== first run: setting up $(VENV) (a few minutes; later runs skip this) =="
	@test -x $(BIN)/python || { echo "-- creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "-- upgrading pip"
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "-- installing fleet and its dependencies (the longest step)"
	$(BIN)/python -m pip install --progress-bar off -e '.[test]' | awk '/^(Collecting|Successfully)/'
	@echo "-- $(VENV) ready"
	@touch $@

system-deps:
	@scripts/system-deps.sh $(SYSTEM_PACKAGES)

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

imports: venv
	$(BIN)/lint-imports

# The admin console's screenshots in the README (docs/screenshots/console-*.png),
# taken by the browser tests in Debian's Chromium.
screenshots: venv system-deps
	FLEET_SCREENSHOT_DIR=docs/screenshots $(BIN)/pytest -q -p no:cacheprovider \
		tests/integration/ui/test_console_browser.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
