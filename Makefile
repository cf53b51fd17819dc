# The two entry points of the README. Each creates its own virtual environment.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-all lint bench-train clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

# Real Fashion-MNIST from Debian when we can install it (root + apt); otherwise the demo uses digits.
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) \
	  || echo "could not install dataset-fashion-mnist; the demo will use scikit-learn digits"; \
	fi

demo: $(VENV)/.installed fashion-mnist
	$(BIN)/jaxpoison demo

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/pytest -n 2

test-all: $(VENV)/.installed-dev
	$(BIN)/pytest -n 2 -m ''

bench-train: $(VENV)/.installed
	$(BIN)/python benchmarks/train_throughput.py --out runs/train_throughput.json

clean:
	rm -rf $(VENV) runs .pytest_cache
