# vmlet: `make demo` shows a VM come up on a local control plane; `make test` runs every test.
SHELL := bash
CACHE ?= $(or $(VMLET_CACHE),$(HOME)/.cache/vmlet)
PYVER := $(shell python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
VENV ?= $(CACHE)/venv-py$(PYVER)
BIN := $(VENV)/bin
IAAS ?= vsphere
# What `make setup` installs besides the virtualenv and the Go-built peers (hack/setup.sh): all of
# it by default (`make test`), only what the chosen IAAS runs for `make up` and `make demo`.
VMLET_SETUP ?= all
export VMLET_CACHE := $(CACHE)
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: setup images up down demo test test-cold lint proto bench

setup:
	@VMLET_SETUP=$(VMLET_SETUP) bash hack/setup.sh >/dev/null

# Every service's image (vmlet/<service>:0.1.0), built offline with BuildKit on a Debian base made
# with debootstrap; the cache keeps base and wheels (hack/images.sh).
images:
	@bash hack/images.sh

# A target-specific value holds for the target's prerequisites too: here, setup.
up demo: VMLET_SETUP = $(IAAS)
test: VMLET_SETUP = all

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
