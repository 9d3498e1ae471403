# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
VENV := .venv
PYTHON ?= python3
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := 1

# Debian packages the loop runs for real (binary -> package); chromium opens reports in tests.
SYSTEM_BINARIES := prometheus promtool prometheus-pushgateway prometheus-alertmanager amtool nginx docker-compose chromium
SYSTEM_PACKAGES := prometheus prometheus-pushgateway prometheus-alertmanager nginx docker-compose chromium

.PHONY: setup system-packages python git-identity dvc-remote data test test-fast demo lint format clean

setup: system-packages python git-identity dvc-remote data  ## everything the loop needs; safe to re-run

system-packages:
	@missing=""; for b in $(SYSTEM_BINARIES); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (missing:$$missing)"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	fi

python: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

git-identity:  ## automated commits (dvc.lock, data revs) need an author
	@git config user.email >/dev/null || git config user.email "driftloop@localhost"
	@git config user.name >/dev/null || git config user.name "driftloop"

dvc-remote:  ## the local DVC remote named in .dvc/config
	@mkdir -p .driftloop/dvc-remote

data: python dvc-remote  ## the training data present, DVC-tracked and pushed
	@driftloop data

test: setup  ## the whole suite, real services included; lists the 30 slowest tests
	pytest -q --durations=30

test-fast: python  ## unit and contract tests only
	pytest -q -m "not integration"

demo: setup  ## the whole loop on the bundled bike-sharing data
	driftloop demo

lint: python
	ruff check . && ruff format --check .

format: python
	ruff format . && ruff check --fix .

clean:  ## runtime state only; data and code stay
	rm -rf .driftloop artifacts/prepared artifacts/model

BENCH_SIZE ?= full
BENCH_OUT := .driftloop/bench/results-$(BENCH_SIZE).jsonl
.PHONY: bench
bench: setup  ## benchmarks, one JSON line per case (BENCH_SIZE=small for a quick run); see docs/benchmarks.md
	@mkdir -p $(dir $(BENCH_OUT)) && : > $(BENCH_OUT)
	set -o pipefail; for script in bench_checks bench_window bench_monitor bench_estimation bench_serving bench_shadow; do \
	  python bench/$$script.py --size $(BENCH_SIZE) | tee -a $(BENCH_OUT) || exit 1; \
	done
	python bench/table.py $(BENCH_OUT)
