# The two commands: `make demo` and `make test`. Both set themselves up.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Real third-party programs the tests run (Debian package names).
SYSTEM_PACKAGES := redis-server mosquitto mosquitto-clients nginx openssl curl gcc mosquitto-dev libmosquitto-dev libssl-dev chromium

.PHONY: test demo lint typecheck imports unit system-deps venv clean screenshots

test: venv system-deps lint typecheck imports
	$(BIN)/pytest

demo: venv
	$(BIN)/fleet-sim demo

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is needed (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
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
