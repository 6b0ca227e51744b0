# The two commands (see README): `make demo` and `make test`. `make test-fast` runs
# only the tests that start no process and need no PostgreSQL or etcd (see
# tests/README.md), in well under a minute, without lint or system packages.
# Idempotent: the venv is created only if missing, packages are installed only when
# pyproject.toml changed (the stamp file), system packages only when missing.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint system-deps bench clean grpc-gen

# Debian's python3 has no ensurepip (so no venv) until python3-venv is installed.
$(BIN)/python:
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
		sudo=; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
		echo "installing python3-venv (needed to create $(VENV))" >&2; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq python3-venv >/dev/null; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@

system-deps:
	@bash scripts/system-deps.sh

demo: $(STAMP)
	@bash scripts/system-deps.sh postgresql chromium chromium-driver
	QUICK=$(QUICK) $(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

test: $(STAMP) system-deps lint
	$(BIN)/pytest

# The markers are added by tests/conftest.py; --durations shows a fast test turning slow.
FAST_TESTS := not processes and not postgres and not etcd and not bench

test-fast: $(STAMP)
	$(BIN)/pytest -m "$(FAST_TESTS)" --durations=5

bench: $(STAMP) system-deps
	$(BIN)/python bench/server.py

# The gRPC example's Python code from its .proto (checked in; run after editing it):
# messages and grpcio stubs by grpcio-tools' protoc, the ASGI app by connect-python's
# plugin. -I maps the .proto into gen/ so the imports read examples.grpc.gen.*.
grpc-gen: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iexamples/grpc/gen=examples/grpc \
		--python_out=. --pyi_out=. --grpc_python_out=. \
		--plugin=protoc-gen-connect-python=$(BIN)/protoc-gen-connect-python \
		--connect-python_out=. examples/grpc/gen/orders.proto

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
