# The same commands the README shows. Each target creates .venv if it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint format bench real-env browser-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU build of torch first, so nothing else pulls a CUDA build into this env.
	$(PIP) install --quiet torch==2.13.0 || $(PIP) install --quiet "torch>=2.4"
	$(PIP) install --quiet -e ".[dev,sim]"
	touch $(STAMP)

demo: $(STAMP)            ## the main job: demos -> train -> evaluate (about 20 min on 2 CPU cores)
	MUJOCO_GL=egl $(VENV)/bin/robopolicy quickstart

test: $(STAMP)            ## lint + the default test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	MUJOCO_GL=egl $(VENV)/bin/pytest -q

test-slow: $(STAMP)       ## the slow tests (minutes each)
	MUJOCO_GL=egl $(VENV)/bin/pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)           ## speed benchmarks; results land in benchmarks/results/
	for b in benchmarks/bench_*.py; do MUJOCO_GL=egl $(PY) $$b || exit 1; done

real-env:                 ## lerobot drivers + LeRobotDataset in their own env (pins an older CUDA torch)
	test -x .venv-real/bin/python || python3 -m venv .venv-real
	.venv-real/bin/pip install --quiet -e ".[real,dev,sim]"

real-test:                ## the lerobot tests (emulated SO-101 and Koch buses, camera, LeRobotDataset, checkpoint parity) in .venv-real
	test -x .venv-real/bin/python || $(MAKE) real-env
	HF_HUB_OFFLINE=1 MUJOCO_GL=egl .venv-real/bin/pytest -q -m real tests/real tests/data/test_importers.py

browser-deps:             ## Debian's chromium + chromedriver for the status-page test (needs root or sudo)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ( $$(command -v sudo) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$(command -v sudo) apt-get install -y -qq chromium chromium-driver )

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
