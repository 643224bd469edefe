# One command to set up and run, one to set up and test. Nothing else needs installing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
JOBS ?= 2

.PHONY: setup run test bench clean

$(BIN)/.freeq-installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.freeq-installed

run: setup
	$(BIN)/twistd --nodaemon --pidfile= freeq --data-dir freeq-data $(ARGS)

test: setup
	@# Best effort: the browser end-to-end test needs Debian's chromium (it skips, saying so, without it).
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "chromium could not be installed; the browser test will be skipped"; \
	fi
	$(BIN)/python -m twisted.trial -j$(JOBS) tests
	@# Types of the package (with the mypy-zope plugin, see setup.cfg); must stay clean.
	$(BIN)/mypy freeq

bench: setup
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) _trial_temp* build *.egg-info
