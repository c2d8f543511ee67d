# sscild: every target sets itself up on a fresh machine.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.sscild-installed
OUT     ?= demo_out

.PHONY: setup demo test bench backgrounds clean help

help:
	@echo "make demo   - set up .venv and run the full pipeline on a built-in synthetic patient"
	@echo "make test   - set up .venv and run the test suite (CPU)"
	@echo "make bench  - set up .venv and write bench/RESULTS.md"
	@echo "make backgrounds - fetch the extra real chest CTs of the real-anatomy training configs (.cache/backgrounds)"

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch first, pinned to the CPU wheel, so nothing later pulls a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/sscild demo -o $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

backgrounds: $(STAMP)
	$(BIN)/python bench/fetch_backgrounds.py

clean:
	rm -rf $(OUT) bench/work .pytest_cache
