# The two commands of the README's quick start:
#   make quick   install into .venv and run the quick grid end to end (results/quick/tables/main.csv)
#   make test    install into .venv and run the test suite (what CI runs)
# and, after them, without activating .venv:
#   make status  progress of the quick grid (jobs per rule, env steps, ETA; safe while it runs)
#   make report  the quick grid's HTML report: results/quick/report.html (tables, figures, captions)
#   make shell   a shell with .venv active, where the README's dtrl/snakemake commands run as written
PYTHON ?= python3
VENV ?= .venv
# pip's choice of build: the CPU wheel where a local wheel cache holds it, else PyPI's default Linux wheel,
# which is the CUDA build. CPU build anywhere: TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu";
# a GPU user sets TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" or installs CUDA
# torch into the venv first (any torch>=2.4 satisfies pyproject.toml).
TORCH ?= torch==2.13.0
CORES ?= all
BIN := $(VENV)/bin

QUICK := --configfile config/quick.yaml

.PHONY: install quick paper test lint clean-quick status report shell
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The default target (rule all) is the report plus every run of the grid, so a deleted run is redone.
quick: install
	$(BIN)/snakemake --cores $(CORES) $(QUICK)
	@echo "main table: results/quick/tables/main.md, figures: results/quick/figures/, report: make report"
	@echo "the README's other commands: source $(BIN)/activate first (or make shell)"

status: install
	$(BIN)/dtrl status -c config/config.yaml -c config/quick.yaml

report: install
	$(BIN)/snakemake $(QUICK) --report results/quick/report.html

shell: install
	@echo "dtrl and snakemake on PATH; exit to leave"
	@PATH="$(abspath $(BIN)):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))" $${SHELL:-bash} -i

paper: install
	$(BIN)/snakemake --cores $(CORES)
	@echo "main table: results/tables/main.md, figures: results/figures/"

test: install
	$(BIN)/pytest -q -n 2

clean-quick:
	rm -rf results/quick
