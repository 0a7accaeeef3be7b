# MedSeRL. Two commands for a new machine: `make run` and `make test`. Each does its own set-up.
SHELL := /bin/bash
PYTHON ?= python3
CACHE ?= $(HOME)/.cache/medserl
LOCK_HASH := $(shell sha256sum requirements.lock | cut -c1-12)
VENV ?= $(CACHE)/venv-$(LOCK_HASH)
WHEELHOUSE ?= $(CACHE)/wheelhouse
PY := $(VENV)/bin/python
RUN_OUT ?= runs/latest
# MEDEC when it sits beside the clone (or MEDSERL_MEDEC_DIR); otherwise `medserl run` uses its demo set
MEDEC_DIR ?= $(or $(MEDSERL_MEDEC_DIR),$(wildcard ../shared/medec))
PYTEST_ARGS ?=

.PHONY: help venv run test lint protos check-protos kafka bench clean k8s

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# The venv lives outside the clone, keyed by the lock: CI on the same machine reuses it, and torch
# (a CUDA build of a few GB from PyPI) is downloaded once into the wheelhouse.
$(VENV)/.installed:  # the folder name carries the lock hash, so a fresh clone (newer mtimes) reuses it
	@echo ">> setting up $(VENV)"
	@mkdir -p $(WHEELHOUSE)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip wheel -q --find-links $(WHEELHOUSE) -w $(WHEELHOUSE) -r requirements.lock
	$(VENV)/bin/pip install -q --no-index --find-links $(WHEELHOUSE) -r requirements.lock
	touch $@

venv: $(VENV)/.installed  ## create the virtualenv (cached outside the clone)
	@$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e . >/dev/null

run: venv  ## the main job, embedded, offline, CPU: data -> SFT set -> tiny model -> SFT -> RL rollouts -> report
	$(VENV)/bin/medserl run --out $(RUN_OUT) $(if $(MEDEC_DIR),--medec-dir $(MEDEC_DIR),)

test: venv  ## lint, stub freshness, and every test against a real Kafka broker the tests start
	$(VENV)/bin/ruff check .
	$(PY) scripts/run_tests.py $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

protos: venv  ## regenerate the committed Python stubs from protos/
	$(PY) scripts/gen_protos.py

kafka: venv  ## run a local Kafka broker until Ctrl-C
	$(PY) -m medserl_cli.kafka_local start

bench: venv  ## run every benchmark in bench/
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

k8s:  ## render the Kubernetes manifests (offline)
	kubectl kustomize deploy/k8s/overlays/dev >/dev/null && kubectl kustomize deploy/k8s/overlays/production >/dev/null && echo "manifests render"

clean:
	rm -rf runs .pytest_cache
