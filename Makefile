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
	$(BIN)/python -m twisted.trial -j$(JOBS) tests

bench: setup
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) _trial_temp* build *.egg-info
