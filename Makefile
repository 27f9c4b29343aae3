# Two entry points for a fresh machine: `make demo` and `make test`. Each builds its own venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[dev,train,flower,audit]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/secagg simulate --clients 100 --dim 100000 --dropout 0.1 --late-dropout 0.05
	$(BIN)/secagg simulate --clients 100 --dim 100000 --dropout 0.1 --late-dropout 0.05 --active --json

test: $(VENV)/.installed
	$(BIN)/ruff check secagg protocols audits tests bench
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run --out docs/benchmarks.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
