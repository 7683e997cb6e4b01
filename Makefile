# sidetrace — the conventional entry points. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
CACHE ?= $(HOME)/.cache/sidetrace
export SIDETRACE_CACHE := $(CACHE)

.PHONY: help test unit lint fmt crds chart-docs demo e2e-local e2e-controlplane e2e-kind bench bench-netns bench-profile images peers cluster-up cluster-down e2e-node ci-cold

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

test: ## every test tier: installs the peers, builds, images, one-node cluster, runs all, lists what did not run
	@# e2e/test.sh prints each step with its timing and a summary; under CI=true a skip fails.
	CARGO=$(CARGO) e2e/test.sh

unit: ## unit and component tests only (no root, no peers; the end-to-end tiers print SKIP)
	@# Asked-for skips: CI is unset here so that the one skip policy lets them through.
	CI= SIDETRACE_SKIP_E2E=1 $(CARGO) test --workspace --all-targets

lint: ## rustfmt and clippy, as CI runs them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# The root-only benchmarks (operator, transparent path) build only with this feature.
	$(CARGO) clippy -p sidetrace-bench --features operator --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

crds: ## regenerate the CRD YAML from crds/src (checked for drift by a test)
	$(CARGO) run -q -p sidetrace-crds --bin crdgen -- crds/tracedservices.sidetrace.dev.yaml helm/sidetrace/crds/tracedservices.sidetrace.dev.yaml

chart-docs: ## regenerate the values table in helm/sidetrace/README.md from values.yaml's comments (checked for drift by a test)
	$(CARGO) run -q -p sidetrace-e2e --bin sidetrace-chart-docs

demo: ## the local end-to-end demo: front -> service1 -> service2 in netns pods, traces printed (DEMO_ARGS=--headerless: apps that copy no headers, parent inference off then on)
	@# Installs what it needs first (iptables, iproute2, a JRE, the Zipkin jar), saying so.
	@if [ -x "$(CACHE)/bin/jaeger" ]; then e2e/peers.sh system; else e2e/peers.sh system zipkin; fi
	$(CARGO) build -p sidetrace-init -p sidetrace-proxy -p sidetrace-e2e --bins
	$(CARGO) run -q -p sidetrace-e2e --bin sidetrace-demo -- $(DEMO_ARGS)

e2e-local: ## local end-to-end data plane tests (root, iptables, network namespaces)
	e2e/peers.sh system zipkin
	$(CARGO) build -p sidetrace-init -p sidetrace-proxy -p sidetrace-e2e --bins
	$(CARGO) test -p sidetrace-e2e --test dataplane
	@if [ -x "$(CACHE)/bin/jaeger" ]; then SIDETRACE_E2E_COLLECTOR=jaeger $(CARGO) test -p sidetrace-e2e --test dataplane -- --skip span_endpoints_name_the_right_pods \
	&& SIDETRACE_E2E_COLLECTOR=jaeger SIDETRACE_E2E_COLLECTOR_PROTOCOL=otlp-http $(CARGO) test -p sidetrace-e2e --test dataplane -- --skip span_endpoints_name_the_right_pods; \
	else echo "e2e-local: Jaeger tier not run: $(CACHE)/bin/jaeger is not built (e2e/peers.sh jaeger)"; fi

e2e-kind: ## the cluster suite on a kind cluster: images, cluster, suite, cluster deleted (root; starts Docker's engine and builds kind and its node image where missing)
	@# kind's own node image where it can be pulled; built offline (e2e/kind/node-image.sh) where not.
	CARGO=$(CARGO) e2e/kind/run.sh

bench: ## benchmarks side by side with Envoy; writes bench/RESULTS.md (BENCH_ARGS=--full for the long profile)
	@[ -x "$(CACHE)/bin/envoy" ] || e2e/peers.sh envoy
	@[ -s "$(CACHE)/bin/zipkin.jar" ] || e2e/peers.sh zipkin
	$(CARGO) build --release -p sidetrace-proxy -p sidetrace-injector -p sidetrace-operator
	@# Root-only tiers (write "Not measured: why" otherwise): operator vs a real apiserver,
	@# transparent path in netns pods. Debug-built operator harness; the binaries under test are release.
	$(CARGO) build -p sidetrace-init -p sidetrace-e2e --bins
	-$(CARGO) run -p sidetrace-bench --features operator --bin sidetrace-bench-operator
	-$(MAKE) bench-netns
	$(CARGO) run --release -p sidetrace-bench --bin sidetrace-bench-metrics
	$(CARGO) run --release -p sidetrace-bench --bin sidetrace-bench -- all $(BENCH_ARGS)

bench-netns: ## the transparent path (real iptables, netns pods): no sidecars vs a TCP relay vs sidetrace vs Envoy as Istio's sidecar, pinned, interleaved (root); writes bench/RESULTS-netns.md (NETNS_ARGS=--help)
	@[ -x "$(CACHE)/bin/envoy" ] || e2e/peers.sh envoy
	@[ -s "$(CACHE)/bin/zipkin.jar" ] || e2e/peers.sh zipkin
	@# Everything release, the load generator too: the harness finds the pods' binaries beside itself.
	$(CARGO) build --release -p sidetrace-init -p sidetrace-proxy
	$(CARGO) build --release -p sidetrace-e2e --bin sidetrace-demo-app
	$(CARGO) build --release -p sidetrace-bench --features operator --bin sidetrace-bench --bin sidetrace-bench-netns
	target/release/sidetrace-bench-netns $(NETNS_ARGS)

bench-profile: ## per-request instructions, allocations, syscalls (callgrind, dhat, strace -c) of the proxy vs a TCP relay; writes bench/RESULTS-profile.md
	@# The release build with symbols kept (profile `profiling`), so the tables name functions.
	$(CARGO) build --profile profiling -p sidetrace-proxy
	$(CARGO) build --profile profiling -p sidetrace-bench --bin sidetrace-bench
	target/profiling/sidetrace-bench profile $(PROFILE_ARGS)

images: ## container images, amd64 and arm64 (ARCHES=host: the host's only); REGISTRY=prefix PUSH=1 pushes them; KIND_CLUSTER=name loads them into kind
	@# docker, podman or buildah; archives under $(CACHE)/images; jaeger (for the tests here) when
	@# e2e/peers.sh jaeger built it. Pushing uses the engine's own login (podman/buildah/docker login).
	images/build.sh $(if $(ARCHES),--arch "$(ARCHES)") $(if $(REGISTRY),--registry "$(REGISTRY)") \
		$(if $(filter 1 true yes,$(PUSH)),--push) $(if $(KIND_CLUSTER),--kind-load "$(KIND_CLUSTER)")

peers: ## install and cache the real peers (kube-apiserver, etcd, helm, collector) under $(CACHE)
	e2e/peers.sh all

cluster-up: ## a real one-node Kubernetes cluster in its own network namespace (root; builds node peers when missing)
	@# Images come from `make images` (archives under $(CACHE)/images); kubeconfig: /var/lib/sidetrace-cluster/kubeconfig.
	e2e/cluster/cluster-up.sh

cluster-down: ## stop the one-node cluster and remove its processes, mounts, namespace and state
	e2e/cluster/cluster-down.sh

e2e-node: ## end-to-end suite on the one-node cluster alone (starts the cluster if needed; make test runs it too)
	@[ -s /var/lib/sidetrace-cluster/env ] || e2e/cluster/cluster-up.sh
	$(CARGO) build -p sidetrace-cli
	$(CARGO) test -p sidetrace-e2e --test node -- --test-threads=1

ci-cold: ## run .ci/run as a brand-new machine would: fresh clone, empty HOME and caches (PURGE_DEBS=1: remove the Debian packages the project installs first)
	e2e/ci-cold.sh
