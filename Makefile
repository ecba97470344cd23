# The project's front door. `make run` and `make test` are the two README commands; both
# create or update .venv with Python 3.13 themselves.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)/layers/shared:$(CURDIR)
# sam build needs a python3.13 on PATH: the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export SAM_CLI_TELEMETRY := 0
export AWS_DEFAULT_REGION ?= eu-west-1

# Python 3.13 on PATH, or in pyenv (these machines: PYENV_VERSION=3.13.0 python3.13).
PYTHON313 ?= $(shell \
	for c in python3.13 $$HOME/.pyenv/versions/3.13*/bin/python3.13 /usr/local/bin/python3.13 /usr/bin/python3.13; do \
		p=$$(PYENV_VERSION=3.13.0 $$c -c 'import sys; assert sys.version_info[:2] == (3, 13); print(sys.executable)' 2>/dev/null) \
			&& { echo $$p; break; }; \
	done)

.PHONY: help venv run test test-pg15 test-fast migrate build lint openapi bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml layers/shared/requirements.txt
	@test -n "$(PYTHON313)" || { echo "Python 3.13 not found (PATH or pyenv 3.13.x)"; exit 1; }
	@test -x $(PY) || $(PYTHON313) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=25.1"
	$(PY) -m pip install --quiet --disable-pip-version-check --group dev
	@touch $(STAMP)

venv: $(STAMP) ## create or update .venv

run: $(STAMP) ## start everything locally: embedded Postgres, local API, (later) Hypay simulator
	$(PY) -m ops.run

test: $(STAMP) ## the whole suite (embedded Postgres, or DATABASE_URL)
	$(PY) -m pytest

test-pg15: $(STAMP) ## the whole suite against Debian's PostgreSQL 15 (installed if missing), via DATABASE_URL
	@url=$$(ops/pg15.sh start) && echo "DATABASE_URL=$$url" && \
		DATABASE_URL="$$url" $(PY) -m pytest; rc=$$?; ops/pg15.sh stop; exit $$rc

test-fast: $(STAMP) ## the suite without the slow sam-build test
	$(PY) -m pytest -m "not build"

migrate: $(STAMP) ## apply pending sql/ migrations (DATABASE_URL, else the make-run database)
	$(PY) -m ops.migrate

build: $(STAMP) ## sam build (function code + shared layer into .aws-sam/build)
	$(VENV)/bin/sam build --template-file template.yaml

lint: $(STAMP) ## ruff, mypy, cfn-lint, sam validate --lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/cfn-lint template.yaml
	$(VENV)/bin/sam validate --lint --template-file template.yaml

openapi: $(STAMP) ## regenerate docs/openapi.json from the functions' routes
	$(PY) -m ops.openapi

bench: $(STAMP) ## benchmark the Postgres idempotency layer; writes docs/benchmarks.md
	$(PY) -m bench.idempotency

clean: ## remove build output and local state (keeps .venv)
	rm -rf .aws-sam .local .pytest_cache
