# tusserver developer entry points.
#   make run     install the service in .venv and serve on http://127.0.0.1:1080 (data in ./data)
#   make run PORT=8080 HOST=0.0.0.0 DATA_DIR=/srv/tus   the same, elsewhere
#   make test    install everything the tests need (scripts/setup-test-env.sh), run pytest -n auto
#   make lint    ruff check + mypy
#   make bench   benchmarks/run_all.py
# Variables: HOST (127.0.0.1), PORT (1080), DATA_DIR (./data), PYTHON (python3), VENV (.venv),
# PYTEST_ARGS, BENCH_ARGS.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -qq --disable-pip-version-check
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
BENCH_ARGS ?=
# Plain assignments: set them on the command line (make run PORT=8080 HOST=0.0.0.0); a HOST
# or PORT variable of the environment (some shells set HOST) is not taken.
HOST = 127.0.0.1
PORT = 1080
DATA_DIR = ./data

.PHONY: help run setup test lint bench clean

help:
	@sed -n 's/^#   //p' Makefile

# The service's own install; make's timestamps keep it from reinstalling on every run.
$(VENV)/.run-deps: setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[s3,postgres]'
	@touch $@

run: $(VENV)/.run-deps
	@if ! dpkg-query -W -f='$${Status}' libmagic1 2>/dev/null | grep -q 'install ok installed'; then \
		echo "installing libmagic1"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libmagic1; \
	fi
	@# Video and audio probing and posters: ffprobe and ffmpeg (images need only Pillow, from pip).
	@if ! command -v ffprobe >/dev/null 2>&1 || ! command -v ffmpeg >/dev/null 2>&1; then \
		echo "installing ffmpeg"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg; \
	fi
	@# The web UI's Uppy and Chart.js come from npm (package-lock.json), never from a CDN.
	@if ! $(PYTHON) scripts/node_modules_current.py; then \
		echo "npm ci: node_modules does not match package-lock.json"; \
		command -v npm >/dev/null 2>&1 || { echo "installing nodejs and npm"; \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; }; \
		npm ci --no-audit --no-fund --loglevel=error && $(PYTHON) scripts/node_modules_current.py --stamp; \
	fi
	exec $(BIN)/tusserver --data-dir $(DATA_DIR) serve --host $(HOST) --port $(PORT)

setup:
	@bash scripts/setup-test-env.sh

test: setup
	$(BIN)/pytest -n auto $(PYTEST_ARGS) tests/

lint:
	@test -x $(BIN)/ruff -a -x $(BIN)/mypy || bash scripts/setup-test-env.sh
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: setup
	@if [ -f benchmarks/run_all.py ]; then \
		$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS); \
	else \
		echo "benchmarks/run_all.py not found: nothing to run"; \
	fi

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache test-artifacts
	find . -path ./.venv -prune -o -path ./node_modules -prune -o -name __pycache__ -type d -exec rm -rf {} +
