# The two commands of the README's quick start:
#   make quick   install into .venv and run the quick grid end to end (results/quick/tables/main.csv)
#   make test    install into .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
# CPU build from this machine's disk; a GPU user sets TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# or installs CUDA torch into the venv first (any torch>=2.4 satisfies pyproject.toml).
TORCH ?= torch==2.13.0
CORES ?= all
BIN := $(VENV)/bin

.PHONY: install quick paper test lint clean-quick
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The default target (rule all) is the report plus every run of the grid, so a deleted run is redone.
quick: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/quick.yaml
	@echo "main table: results/quick/tables/main.md, figures: results/quick/figures/"

paper: install
	$(BIN)/snakemake --cores $(CORES)
	@echo "main table: results/tables/main.md, figures: results/figures/"

test: install
	$(BIN)/pytest -q -n 2

clean-quick:
	rm -rf results/quick
