# Two commands do all the set-up (see README):
#   make reproduce   run the main job (quick experiments on bundled data)
#   make test        lint + the whole test suite
# Both create ./.venv and install the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: reproduce test test-slow mutation bench clean smoke-torch

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
	$(BIN)/mypy --strict --untyped-calls-exclude=torch tests/typing/readme_usage.py
	$(BIN)/python -m pytest -n 2 -q

# The core install (no extras) in a fresh venv with another torch release, and a smoke
# test of layers, factorize, save/load and gates: make smoke-torch TORCH=2.12.1
TORCH ?= 2.12.1
smoke-torch:
	bash scripts/smoke_other_torch.sh $(TORCH)

# Tests too long for the default suite that CI still runs (.ci/run): a real
# `compactnn reproduce` in a fresh process (about a minute).
test-slow: $(STAMP)
	COMPACTNN_RUN_SLOW=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_cli.py::test_reproduce_without_fashion_mnist_end_to_end

# Mutation testing (docs/testing.md): slow (hours on 2 cores), not part of `make test`.
# MUTMUT_ARGS narrows the run, e.g. MUTMUT_ARGS='"compactnn.engine.early_stop*"'.
mutation: $(STAMP)
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/mutmut run --max-children 1 $(MUTMUT_ARGS)
	$(BIN)/mutmut results

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache mutants
