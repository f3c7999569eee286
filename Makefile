# Two commands do all the set-up (see README):
#   make reproduce   run the main job (quick experiments on bundled data)
#   make test        lint + the whole test suite
# Both create ./.venv and install the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: reproduce test bench clean

$(STAMP): pyproject.toml scripts/install_data.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[experiments,test,lm]"
	bash scripts/install_data.sh $(BIN)/python
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/compactnn reproduce $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
