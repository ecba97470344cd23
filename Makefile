# The project's front door. `make run` and `make test` are the two README commands; both
# create or update .venv with Python 3.13 themselves.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed
# The lock is uv.lock: pyproject.toml's dependency groups resolved, with the hashes of every file. `make lock`
# exports two requirements files from it (generated, never edited by hand): LAYER_REQS, the runtime group,
# is what sam build installs into the layer; DEV_REQS, the dev group (runtime included), is what .venv holds.
LAYER_REQS := layers/shared/requirements.txt
DEV_REQS   := requirements-dev.txt
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

.PHONY: help venv lock run test test-pg15 test-fast prove migrate migrate-check build deploy lint openapi bench clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# pip install adds and moves versions but never removes: uninstall whatever the dev lock no longer lists,
# so that .venv is exactly the lock.
define PRUNE_VENV
import importlib.metadata as md, re, subprocess, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
locked = {norm(re.split(r"[=\[ ;]", line, maxsplit=1)[0]) for line in open(sys.argv[1]) if line[:1].isalnum()}
names = {d.metadata["Name"] for d in md.distributions() if d.metadata["Name"]}
extra = sorted(n for n in names if norm(n) not in locked)
if extra:
    print("not in " + sys.argv[1] + ", uninstalling:", *extra)
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *extra], check=True)
endef
export PRUNE_VENV

# Exactly the dev lock, every file checked against its hash (pip itself and uv included, at their locked
# versions: pip also runs sam build's installs).
$(STAMP): $(DEV_REQS)
	@test -n "$(PYTHON313)" || { echo "Python 3.13 not found (PATH or pyenv 3.13.x)"; exit 1; }
	@test -x $(PY) || $(PYTHON313) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r $(DEV_REQS)
	@$(PY) -I -c "$$PRUNE_VENV" $(DEV_REQS)
	@touch $(STAMP)

venv: $(STAMP) ## create or update .venv (exactly requirements-dev.txt)

# After any change to pyproject.toml's dependency groups: re-lock (keeping every other locked version),
# re-export both requirements files, update .venv. LOCK_ARGS="--upgrade" moves everything to the newest
# versions the ranges allow, LOCK_ARGS="--upgrade-package NAME" just one.
lock: $(STAMP) ## re-lock uv.lock from pyproject.toml, regenerate layers/shared/requirements.txt and requirements-dev.txt
	UV_PYTHON_DOWNLOADS=never $(UV) lock --python $(PY) $(LOCK_ARGS)
	$(UV) export --frozen --quiet --only-group runtime -o $(LAYER_REQS)
	$(UV) export --frozen --quiet --only-group dev -o $(DEV_REQS)
	@$(MAKE) --no-print-directory venv

run: $(STAMP) ## start everything locally: embedded Postgres, local API, Hypay simulator (AUTH_MODE=rs256|es256|hs256)
	$(PY) -m ops.run

test: $(STAMP) ## the whole suite (embedded Postgres, or DATABASE_URL)
	$(PY) -m pytest

test-pg15: $(STAMP) ## the whole suite against Debian's PostgreSQL 15 (installed if missing), via DATABASE_URL
	@url=$$(ops/pg15.sh start) && echo "DATABASE_URL=$$url" && \
		DATABASE_URL="$$url" $(PY) -m pytest; rc=$$?; ops/pg15.sh stop; exit $$rc

test-fast: $(STAMP) ## the suite without the slow sam-build test
	$(PY) -m pytest -m "not build"

prove: $(STAMP) ## the proof suite at release size against make run's stack (chaos, contract and callback fuzzing, saved cards and refunds under faults); writes docs/proof.md
	$(PY) -m proof $(PROVE_ARGS)

migrate: $(STAMP) ## preflight, then apply pending sql/ migrations in one transaction (DATABASE_URL, else make run's); MIGRATE_ADOPT_LEGACY=1 adopts legacy rows
	$(PY) -m ops.migrate

migrate-check: $(STAMP) ## list the rows a pending migration cannot accept, change nothing
	$(PY) -m ops.migrate --check

# PIP_REQUIRE_HASHES: sam build's second pip pass (a Lambda wheel for a package whose first download does not
# fit Lambda) names no hash; rather than install an unchecked file, that fails.
build: $(STAMP) ## sam build (function code + shared layer into .aws-sam/build), then their bytecode (ops/bytecode.py)
	PIP_REQUIRE_HASHES=1 $(VENV)/bin/sam build --template-file template.yaml $(SAM_BUILD_ARGS)
	$(PY) -m ops.bytecode

deploy: build ## sam deploy, new function versions whenever the parameters changed; ARGS="--config-env prod --parameter-overrides ..."
	$(PY) -m ops.deploy $(ARGS)

lint: $(STAMP) ## ruff, mypy, cfn-lint, sam validate --lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/cfn-lint template.yaml
	$(VENV)/bin/sam validate --lint --template-file template.yaml

openapi: $(STAMP) ## regenerate docs/openapi.json from the functions' routes
	$(PY) -m ops.openapi

bench: $(STAMP) ## every benchmark against its baseline, repeated and interleaved (~10 min); writes docs/benchmarks.md
	$(PY) -m bench

clean: ## remove build output and local state (keeps .venv)
	if [ -L .local/pgdata ]; then rm -rf "$$(readlink -f .local/pgdata)"; fi  # a clone whose path has a space
	rm -rf .aws-sam .local .pytest_cache
