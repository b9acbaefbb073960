# The two commands a newcomer runs: `make demo` and `make test`. Everything else is here
# for the developers. Python 3.11+ is required; the virtual environment lives in .venv.
#
# Installs are reproducible: .venv gets exactly the versions in uv.lock (every dependency,
# all extras and the dev tools), not whatever is newest on PyPI today. The ranges in
# pyproject.toml are for people who `pip install stalwart`; uv.lock is what we test with.
# Why uv: one cross-platform lock covers all extras and dependency groups, `uv lock --check`
# (and `uv sync --locked`) catch a pyproject.toml edited without re-locking, and installs
# take seconds. `make lock` moves the pins on purpose; `make test-latest` tries the newest
# versions the ranges allow, so an upstream break shows here before users meet it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# uv itself is pinned too, and bootstrapped with plain pip into a small venv of its own, so
# nothing but Python is needed on the machine and every machine uses the same resolver.
UV_VERSION := 0.13.9
TOOLS      := .tools
UV         := $(TOOLS)/bin/uv
# The stamp is named by version, so bumping UV_VERSION reinstalls uv (and re-syncs .venv).
UV_STAMP   := $(TOOLS)/.uv-$(UV_VERSION)
# Use the machine's Python ($(PYTHON)); never let uv fetch an interpreter of its own.
export UV_PYTHON_DOWNLOADS := never

# The newest-allowed environment for `make test-latest`, kept apart from the locked one.
LATEST := .venv-latest

LINT_PATHS := src tests benchmarks examples

.PHONY: demo test test-latest lint typecheck unit services bench cluster chaos soak lock proto clean

demo: $(STAMP)
	$(BIN)/stalwart demo

# Two test processes (pytest-xdist; a file's tests stay in one process, so module fixtures
# start once): about 1.8x faster than one. `make test PYTEST_PARALLEL=` runs them in one.
# --durations: CI's log names the slowest tests, to keep the suite within its budget.
PYTEST_PARALLEL ?= -n 2 --dist loadfile

test: $(STAMP) services lint typecheck
	$(BIN)/pytest $(PYTEST_PARALLEL) --durations=25

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m "not postgres and not redis and not nats and not slow"

services:
	@scripts/ensure-services
	@scripts/ensure-chromium
	@scripts/ensure-nginx
	@scripts/ensure-wrk

bench: $(STAMP) services
	$(BIN)/python -m benchmarks

# Faults through real servers, one at a time and accumulated (docs/reliability.md). Needs
# root (private PostgreSQL run as postgres, a tmpfs for the spool) and wrk; about 10 minutes.
chaos: $(STAMP)
	@scripts/ensure-wrk
	@scripts/ensure-nginx
	$(BIN)/python -m benchmarks.chaos

# 30 minutes at half the measured capacity, mixed traffic; exits 1 when a criterion fails.
soak: $(STAMP)
	@scripts/ensure-wrk
	$(BIN)/python -m benchmarks.chaos.soak --minutes 30

# Three `stalwart serve` replicas of the fraud example behind nginx, sharing PostgreSQL and
# Redis, until Ctrl-C (docs/cluster.md). nginx is installed when missing.
cluster: $(STAMP)
	@scripts/ensure-services
	@scripts/ensure-nginx
	$(BIN)/python scripts/cluster

$(UV_STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Stalwart needs Python 3.11 or newer; set PYTHON=python3.11"; exit 1; }
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)
	touch $(UV_STAMP)

# Reinstall when either the declarations or the pins change. `--locked` installs exactly
# what uv.lock says and refuses a lock that no longer matches pyproject.toml (run
# `make lock`). uv installs the project itself editable, and removes anything not locked.
$(STAMP): pyproject.toml uv.lock $(UV_STAMP)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --all-extras --group dev \
		--python $(PYTHON) --quiet
	touch $(STAMP)

# The OIP gRPC service's protocol: the vendored grpc_predict_v2.proto compiled into a
# descriptor set (the message classes are built from it, in a descriptor pool of their own:
# serving/grpc/messages.py says why) and type stubs. Committed; a test checks they match.
PROTO_DIR := src/stalwart/serving/grpc
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc --proto_path=$(PROTO_DIR) \
		--descriptor_set_out=$(PROTO_DIR)/grpc_predict_v2.binpb --pyi_out=$(PROTO_DIR) \
		$(PROTO_DIR)/grpc_predict_v2.proto

# Re-resolve every pin to the newest version the ranges allow. Commit the new uv.lock
# only after `make test` passes with it.
lock: $(UV_STAMP)
	$(UV) lock --upgrade --python $(PYTHON)

# Not part of `make test` or CI (it would make them depend on what PyPI published today):
# install the newest versions the pyproject.toml ranges allow, ignoring uv.lock, into
# $(LATEST), and run the same lint, typecheck and tests there. All three run even when one
# fails, so one run reports every break.
test-latest: $(UV_STAMP) services
	rm -rf $(LATEST)
	$(UV) venv --quiet --python $(PYTHON) $(LATEST)
	$(UV) pip install --quiet --python $(LATEST)/bin/python --upgrade --resolution highest \
		-e '.[all]' --group dev
	@status=0; \
	$(LATEST)/bin/ruff check $(LINT_PATHS) || status=1; \
	MYPY_CACHE_DIR=.mypy_cache/latest $(LATEST)/bin/mypy || status=1; \
	$(LATEST)/bin/pytest || status=1; \
	if [ $$status -ne 0 ]; then echo "test-latest: FAILED with the newest allowed versions"; fi; \
	exit $$status

clean:
	rm -rf $(VENV) $(LATEST) $(TOOLS) .stalwart .stalwart-demo .pytest_cache .mypy_cache .ruff_cache
