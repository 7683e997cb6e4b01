# sidetrace — the conventional entry points. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
CACHE ?= $(HOME)/.cache/sidetrace
export SIDETRACE_CACHE := $(CACHE)

.PHONY: help test unit lint fmt crds demo e2e-local e2e-controlplane e2e-kind bench images peers cluster-up cluster-down e2e-node

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

test: ## every test tier this machine can run (unit, component, netns data plane, control plane)
	@# Tests of one crate run other crates' binaries (chart flags, system tests): build them all first.
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --all-targets --no-fail-fast
	@if [ -x "$(CACHE)/bin/jaeger" ]; then SIDETRACE_E2E_COLLECTOR=jaeger $(CARGO) test -p sidetrace-e2e --test dataplane; \
	else echo "SKIP jaeger tier: $(CACHE)/bin/jaeger is not built (e2e/peers.sh jaeger)"; fi

unit: ## unit and component tests only (no root, no peers)
	SIDETRACE_SKIP_E2E=1 $(CARGO) test --workspace --all-targets

lint: ## rustfmt and clippy, as CI runs them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

crds: ## regenerate the CRD YAML from crds/src (checked for drift by a test)
	$(CARGO) run -q -p sidetrace-crds --bin crdgen -- crds/tracedservices.sidetrace.dev.yaml helm/sidetrace/crds/tracedservices.sidetrace.dev.yaml

demo: ## the local end-to-end demo: front -> service1 -> service2 in netns pods, traces printed
	$(CARGO) build -p sidetrace-init -p sidetrace-proxy -p sidetrace-e2e --bins
	@[ -x "$(CACHE)/bin/jaeger" ] || [ -s "$(CACHE)/bin/zipkin.jar" ] || e2e/peers.sh zipkin
	$(CARGO) run -q -p sidetrace-e2e --bin sidetrace-demo

e2e-local: ## local end-to-end data plane tests (root, iptables, network namespaces)
	$(CARGO) build -p sidetrace-init -p sidetrace-proxy -p sidetrace-e2e --bins
	@[ -s "$(CACHE)/bin/zipkin.jar" ] || e2e/peers.sh zipkin
	$(CARGO) test -p sidetrace-e2e --test dataplane
	@if [ -x "$(CACHE)/bin/jaeger" ]; then SIDETRACE_E2E_COLLECTOR=jaeger $(CARGO) test -p sidetrace-e2e --test dataplane; \
	else echo "e2e-local: Jaeger tier not run: $(CACHE)/bin/jaeger is not built (e2e/peers.sh jaeger)"; fi

e2e-kind: ## the kind-based end-to-end suite (needs Docker and kind)
	@# Exits 2, naming what is missing, where Docker (with a running engine) or kind is absent.
	e2e/kind/run.sh

bench: ## benchmarks side by side with Envoy; writes bench/RESULTS.md (BENCH_ARGS=--full for the long profile)
	@[ -x "$(CACHE)/bin/envoy" ] || e2e/peers.sh envoy
	@[ -s "$(CACHE)/bin/zipkin.jar" ] || e2e/peers.sh zipkin
	$(CARGO) build --release -p sidetrace-proxy -p sidetrace-injector -p sidetrace-operator
	@# Root-only tiers (write "Not measured: why" otherwise): operator vs a real apiserver,
	@# transparent path in netns pods. Debug-built harnesses; the binaries under test are release.
	$(CARGO) build -p sidetrace-init -p sidetrace-e2e --bins
	-$(CARGO) run -p sidetrace-bench --features operator --bin sidetrace-bench-operator
	-$(CARGO) run -p sidetrace-bench --features operator --bin sidetrace-bench-netns
	$(CARGO) run --release -p sidetrace-bench --bin sidetrace-bench -- all $(BENCH_ARGS)

images: ## container images for the four binaries and the demo app
	@# docker, podman or buildah; archives under $(CACHE)/images; jaeger when e2e/peers.sh jaeger built it.
	images/build.sh

peers: ## install and cache the real peers (kube-apiserver, etcd, helm, collector) under $(CACHE)
	e2e/peers.sh all

cluster-up: ## a real one-node Kubernetes cluster in its own network namespace (root; builds node peers when missing)
	@# Images come from `make images` (archives under $(CACHE)/images); kubeconfig: /var/lib/sidetrace-cluster/kubeconfig.
	e2e/cluster/cluster-up.sh

cluster-down: ## stop the one-node cluster and remove its processes, mounts, namespace and state
	e2e/cluster/cluster-down.sh

e2e-node: ## end-to-end suite on the one-node cluster (opt-in: SIDETRACE_NODE_E2E=1; starts the cluster if needed)
	@if [ "$${SIDETRACE_NODE_E2E:-}" != 1 ]; then \
		echo "SKIP e2e-node: SIDETRACE_NODE_E2E is not 1 (the node tier is opt-in: a cold node build takes tens of minutes)"; \
	else \
		[ -s /var/lib/sidetrace-cluster/env ] || e2e/cluster/cluster-up.sh; \
		$(CARGO) test -p sidetrace-e2e --test node -- --test-threads=1; \
	fi
