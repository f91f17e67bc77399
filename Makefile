# vmlet: `make demo` shows a VM come up on a local control plane; `make test` runs every test.
SHELL := bash
CACHE ?= $(or $(VMLET_CACHE),$(HOME)/.cache/vmlet)
PYVER := $(shell python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
VENV ?= $(CACHE)/venv-py$(PYVER)
BIN := $(VENV)/bin
IAAS ?= vsphere
export VMLET_CACHE := $(CACHE)
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: setup up down demo test test-cold lint proto bench

setup:
	@bash hack/setup.sh >/dev/null

up: setup
	@$(BIN)/vmlet-localenv up --iaas $(IAAS)

down:
	@if [ -x $(BIN)/vmlet-localenv ]; then $(BIN)/vmlet-localenv down; fi

demo: setup
	@$(BIN)/python -m vmlet_localenv.demo --iaas $(IAAS)

test: setup
	@bash hack/test.sh

# `make test` from nothing: a new empty cache, with Go's and uv's download and build caches inside it,
# so every peer is fetched and built again. Debian's packages stay installed (apt is system-wide).
test-cold:
	@bash hack/test-cold.sh

lint: setup
	@PATH=$(BIN):$$PATH bash hack/lint.sh

proto: setup
	@PATH=$(BIN):$$PATH bash hack/genproto.sh
