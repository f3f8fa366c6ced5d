# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Each creates the virtual environment and installs what it needs on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_output
DEMO_ARGS ?=

.PHONY: demo test lint bench system-deps clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

# espeak-ng renders the phone-aligned synthetic corpus (Debian package).
system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "Installing espeak-ng (Debian package)"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq espeak-ng >/dev/null; }

test: $(STAMP) system-deps
	$(PY) -m pytest -q

demo: $(STAMP) system-deps
	$(VENV)/bin/spidr-hf demo --output-dir $(DEMO_DIR) $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist *.egg-info
