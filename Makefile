# The two entry points of the README. Each creates its own virtual environment.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test docs test-all bench-setup bench-train bench-influence clean

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
	$(MAKE) --no-print-directory docs
	$(BIN)/pytest -n 2

# The documentation site, built strictly (a broken reference or docstring fails) into a temporary directory.
docs: $(VENV)/.installed-dev
	@site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $$site; \
	  status=$$?; rm -rf $$site; exit $$status

test-all: $(VENV)/.installed-dev
	$(BIN)/pytest -n 2 -m ''

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/pip install --quiet --no-deps kronfluence==1.0.1
	touch $@ $(VENV)/.installed

bench-setup: $(VENV)/.installed-bench

bench-train: $(VENV)/.installed
	$(BIN)/python benchmarks/train_throughput.py --out runs/train_throughput.json

bench-influence: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/vs_kronfluence.py --queries 51 --out runs/vs_kronfluence.json
	$(BIN)/python benchmarks/query_scaling.py --out runs/query_scaling.json

clean:
	rm -rf $(VENV) runs .pytest_cache
