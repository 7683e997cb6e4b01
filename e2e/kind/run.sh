#!/usr/bin/env bash
# e2e/kind/run.sh — the kind end-to-end suite (`make e2e-kind`).
#
# On a machine with Docker (engine running) and kind: create a kind cluster, build the images
# (images/build.sh) and `kind load` them, `helm install` the chart, label a namespace, deploy
# the demo topology (client → front-proxy → service1 → service2, the demo app image, the
# TracedServices from crds/examples), send requests through a port-forward, read the trace back
# from the in-cluster Jaeger's API and assert it; then: a TracedService update renames a span
# without redeploying, an opted-out pod has no sidecar, with the injector gone and
# failurePolicy Ignore pods are still created (untraced), `helm uninstall` leaves nothing of the
# release behind. The cluster is deleted on exit (KEEP_CLUSTER=1 keeps it).
#
# Where Docker or kind is missing it prints exactly what is missing and exits 2: it never
# claims success without having run. Every step mirrors a local tier that runs in CI here:
# the netns data plane (e2e/tests/dataplane.rs: the same five-span trace and names), the real
# apiserver system test (e2e/tests/system.rs: injection, opt-out, TracedService rendering,
# webhook loss, uninstall) and the image test (e2e/tests/images.rs: each image's binary runs).
#
#   e2e/kind/run.sh                       kind: create, load, test, delete
#   e2e/kind/run.sh --kubeconfig FILE     the same suite on an existing cluster whose runtime
#                                         already holds the images (e.g. the local node cluster);
#                                         nothing is created or deleted but the suite's objects
#
# Env: SIDETRACE_CACHE (peers and images; default ~/.cache/sidetrace), KIND_NODE_IMAGE (kind's
# node image, e.g. kindest/node:v1.34.0), KEEP_CLUSTER=1, SKIP_IMAGE_BUILD=1 (reuse archives).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE="${SIDETRACE_CACHE:-$HOME/.cache/sidetrace}"
CLUSTER="sidetrace-e2e-$$"
SYSTEM_NS=sidetrace-system
DEMO_NS=demo
WAIT=180s
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sidetrace-kind.XXXXXX")
EXISTING=""
if [[ "${1:-}" == --kubeconfig ]]; then
	EXISTING=${2:?--kubeconfig needs a file}
	[[ -r "$EXISTING" ]] || {
		echo "cannot read kubeconfig $EXISTING" >&2
		exit 2
	}
	export KUBECONFIG="$EXISTING"
else
	export KUBECONFIG="$WORK/kubeconfig"
fi
PF_PIDS=()
CREATED=0
T_START=$SECONDS

LOG_TAG=kind
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
fail() {
	log "FAIL: $*"
	exit 1
}

# ---------------------------------------------------------------------------------------------
# Preflight: say exactly what is missing and exit 2.
# ---------------------------------------------------------------------------------------------
tool() { # name -> path (PATH first, then the peers cache)
	if command -v "$1" >/dev/null 2>&1; then
		command -v "$1"
	elif [[ -x "$CACHE/bin/$1" ]]; then
		echo "$CACHE/bin/$1"
	fi
}

preflight() {
	local missing=()
	if [[ -n "$EXISTING" ]]; then
		: # an existing cluster: no Docker or kind needed
	elif ! command -v docker >/dev/null 2>&1; then
		missing+=("docker: not installed (kind runs its nodes as Docker containers)")
	elif ! docker info >/dev/null 2>&1; then
		missing+=("docker: installed, but 'docker info' fails (no running Docker engine or no access to its socket)")
	fi
	[[ -n "$EXISTING" ]] || command -v kind >/dev/null 2>&1 ||
		missing+=("kind: not installed (go install sigs.k8s.io/kind@latest, or your package manager)")
	KUBECTL=$(tool kubectl)
	HELM=$(tool helm)
	[[ -n "$KUBECTL" ]] || missing+=("kubectl: not on PATH nor in $CACHE/bin (e2e/peers.sh controlplane builds it)")
	[[ -n "$HELM" ]] || missing+=("helm: not on PATH nor in $CACHE/bin (e2e/peers.sh controlplane builds it)")
	command -v curl >/dev/null 2>&1 || missing+=("curl: not installed (requests through the port-forward)")
	command -v python3 >/dev/null 2>&1 || missing+=("python3: not installed (reads the Jaeger API's JSON)")
	if [[ ${#missing[@]} -gt 0 ]]; then
		log "cannot run the kind suite; missing:"
		printf '  - %s\n' "${missing[@]}" >&2
		log "NOT RUN (exit 2). The local tiers (make test) cover each step without Docker."
		exit 2
	fi
}

# ---------------------------------------------------------------------------------------------
# Cleanup: port-forwards, then the cluster (with diagnostics on failure).
# ---------------------------------------------------------------------------------------------
cleanup() {
	local rc=$?
	set +e
	for p in "${PF_PIDS[@]}"; do kill "$p" 2>/dev/null; done
	if [[ -n "$EXISTING" ]]; then
		# Leave the cluster as found: the release (if the suite stopped before uninstalling
		# it) and the demo namespace go.
		[[ $rc -eq 0 ]] || "$KUBECTL" get pods -A -o wide >&2
		"$HELM" uninstall sidetrace --namespace "$SYSTEM_NS" >/dev/null 2>&1
		"$KUBECTL" delete namespace "$DEMO_NS" --wait=false >/dev/null 2>&1
	fi
	if [[ $CREATED == 1 ]]; then
		if [[ $rc -ne 0 ]]; then
			log "diagnostics (exit $rc):"
			"$KUBECTL" get pods -A -o wide >&2
			"$KUBECTL" -n "$SYSTEM_NS" logs deploy/sidetrace-operator --tail=30 >&2
			"$KUBECTL" -n "$SYSTEM_NS" logs deploy/sidetrace-injector --tail=30 >&2
			"$KUBECTL" -n "$DEMO_NS" logs deploy/service1 -c sidetrace-proxy --tail=30 >&2
			kind export logs --name "$CLUSTER" "$WORK/kind-logs" >/dev/null 2>&1 &&
				log "kind logs in $WORK/kind-logs"
		fi
		if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
			log "KEEP_CLUSTER=1: cluster $CLUSTER kept (KUBECONFIG=$KUBECONFIG)"
		else
			log "deleting cluster $CLUSTER"
			kind delete cluster --name "$CLUSTER" >/dev/null 2>&1
		fi
	fi
	if [[ $rc -eq 0 ]]; then
		log "PASS: kind suite in $((SECONDS - T_START))s"
	else
		log "FAILED (exit $rc) after $((SECONDS - T_START))s; work dir $WORK"
	fi
	exit "$rc"
}

k() { "$KUBECTL" "$@"; }

# poll SECONDS DESCRIPTION CMD... — retry CMD every 2s until it succeeds.
poll() {
	local limit=$1 what=$2 t0=$SECONDS
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS - t0 < limit)) || fail "timed out after ${limit}s waiting for: $what"
		sleep 2
	done
	log "ok: $what ($((SECONDS - t0))s)"
}

# port_forward RESOURCE LOCAL:REMOTE NS — background kubectl port-forward, waits until it listens.
port_forward() {
	local res=$1 ports=$2 ns=$3 local_port=${2%%:*}
	# kubectl itself in the background (not the k wrapper), so that $! is kubectl's pid.
	"$KUBECTL" -n "$ns" port-forward "$res" "$ports" >"$WORK/pf-$local_port.log" 2>&1 &
	PF_PIDS+=($!)
	poll 30 "port-forward $ns/$res on 127.0.0.1:$local_port" \
		bash -c "exec 3<>/dev/tcp/127.0.0.1/$local_port"
}

# ---------------------------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------------------------
create_cluster() {
	local args=(create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 180s)
	[[ -z "${KIND_NODE_IMAGE:-}" ]] || args+=(--image "$KIND_NODE_IMAGE")
	log "==> kind ${args[*]}"
	CREATED=1
	kind "${args[@]}"
}

load_images() {
	if [[ "${SKIP_IMAGE_BUILD:-0}" != 1 ]]; then
		# The chart's in-cluster Jaeger needs its image; build the binary when it is missing.
		[[ -x "$CACHE/bin/jaeger" ]] || "$ROOT/e2e/peers.sh" jaeger
		log "==> images/build.sh (docker)"
		# kind runs on this machine: its nodes have this machine's architecture.
		SIDETRACE_IMAGE_ENGINE=docker "$ROOT/images/build.sh" --arch host
	fi
	local manifest="$CACHE/images/images.tsv" name ref archive n=0
	[[ -f "$manifest" ]] || fail "$manifest missing: images/build.sh exports the archives"
	for name in operator injector proxy init demo-app jaeger; do
		grep -q "^$name	" "$manifest" || fail "image $name not built (see $manifest)"
	done
	while IFS=$'\t' read -r name ref archive; do
		log "==> kind load image-archive $archive ($ref)"
		kind load image-archive "$archive" --name "$CLUSTER"
		n=$((n + 1))
	done <"$manifest"
	log "loaded $n images"
}

install_chart() {
	log "==> helm install sidetrace (namespace $SYSTEM_NS)"
	# pullPolicy Never: the images exist only on the nodes; a typo must fail, not pull.
	# Jaeger: the image built here from the same Jaeger release, not the chart's default (the
	# Jaeger project's own image), which cannot be pulled here.
	local jaeger_ref
	jaeger_ref=$(sed -n 's/^jaeger\t\([^\t]*\)\t.*/\1/p' "$CACHE/images/images.tsv")
	[[ -n "$jaeger_ref" ]] || fail "no jaeger image in $CACHE/images/images.tsv"
	local jname=${jaeger_ref%:*}
	"$HELM" install sidetrace "$ROOT/helm/sidetrace" --namespace "$SYSTEM_NS" --create-namespace \
		--set images.pullPolicy=Never --set "images.jaeger.registry=${jname%%/*}" \
		--set "images.jaeger.repository=${jname#*/}" --set "images.jaeger.tag=${jaeger_ref##*:}" \
		--wait --timeout 5m
	k -n "$SYSTEM_NS" rollout status deploy/sidetrace-operator --timeout="$WAIT"
	k -n "$SYSTEM_NS" rollout status deploy/sidetrace-injector --timeout="$WAIT"
	k -n "$SYSTEM_NS" rollout status deploy/jaeger --timeout="$WAIT"
	# The operator writes the webhook's caBundle; until then admission would be skipped.
	poll 120 "webhook caBundle written by the operator" bash -c \
		"test -n \"\$('$KUBECTL' get mutatingwebhookconfiguration sidetrace-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}')\""
}

# The demo app in a Deployment + Service. Args: name, inject label value ("" for none), then
# demo-app arguments.
demo_app() {
	local name=$1 inject=$2
	shift 2
	local args="" a labels="{app: $name}"
	[[ -z "$inject" ]] || labels="{app: $name, sidetrace.dev/inject: \"$inject\"}"
	for a in "$@"; do args+="            - \"$a\""$'\n'; done
	k apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: $name, namespace: $DEMO_NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: $name}}
  template:
    metadata:
      labels: $labels
    spec:
      containers:
        - name: app
          image: sidetrace/demo-app:$APP_VERSION
          imagePullPolicy: Never
          args:
            - "--listen=0.0.0.0:8080"
            - "--name=$name"
$args          ports: [{containerPort: 8080, name: http}]
          readinessProbe: {httpGet: {path: /healthz, port: 8080}}
---
apiVersion: v1
kind: Service
metadata: {name: $name, namespace: $DEMO_NS}
spec:
  selector: {app: $name}
  ports: [{name: http, port: 8080, targetPort: 8080}]
EOF
}

# A pod's container and init container names, space-separated.
containers_of() { # ns selector-or-pod
	k -n "$1" get pod "$2" -o jsonpath='{.spec.initContainers[*].name} {.spec.containers[*].name}'
}

deploy_demo() {
	log "==> namespace $DEMO_NS labelled sidetrace.dev/inject=enabled, TracedServices, topology"
	k create namespace "$DEMO_NS"
	k label namespace "$DEMO_NS" sidetrace.dev/inject=enabled
	k apply -f "$ROOT/crds/examples/demo-front-proxy.yaml" -f "$ROOT/crds/examples/demo-service1.yaml" \
		-f "$ROOT/crds/examples/demo-service2.yaml"
	demo_app service2 ""
	demo_app service1 "" "--route=/trace/1=http://service2:8080/trace/2"
	demo_app front-proxy "" "--route=/trace/1=http://service1:8080/trace/1" \
		"--route=/trace/2=http://service2:8080/trace/2"
	# The client stands in for the user: not injected (so the front's inbound sidecar records
	# the SERVER span of a request that arrives by pod IP, as the netns client does), reached
	# through a port-forward, calling the front through its Service.
	demo_app client false "--route=/go=http://front-proxy:8080/trace/1"
	local d pod names
	for d in service2 service1 front-proxy client; do
		k -n "$DEMO_NS" rollout status "deploy/$d" --timeout="$WAIT"
	done
	for d in service2 service1 front-proxy; do
		pod=$(k -n "$DEMO_NS" get pod -l "app=$d" -o jsonpath='{.items[0].metadata.name}')
		names=$(containers_of "$DEMO_NS" "$pod")
		[[ " $names " == *" sidetrace-init "* && " $names " == *" sidetrace-proxy "* ]] ||
			fail "$d ($pod) not injected: containers [$names]"
		log "ok: $d injected ($names)"
	done
	pod=$(k -n "$DEMO_NS" get pod -l app=client -o jsonpath='{.items[0].metadata.name}')
	names=$(containers_of "$DEMO_NS" "$pod")
	[[ " $names " != *" sidetrace-proxy "* ]] || fail "opted-out client was injected: [$names]"
	k -n "$DEMO_NS" wait --for=condition=Ready tsvc --all --timeout="$WAIT"
}

# The Jaeger API's traces for front-proxy, asserted like the netns data-plane test: five spans
# in one trace, SERVER→CLIENT→SERVER→CLIENT→SERVER, distinct ids, http.status_code 200, and
# service1's outbound span named $1. Prints the trace id on success.
JAEGER_ASSERT=$(
	cat <<'PY'
import json, sys
want_s1_client, seen = sys.argv[1], set(sys.argv[2].split(",")) - {""}
data = json.load(sys.stdin).get("data") or []
errors = []
for t in data:
    if t["traceID"] in seen:
        continue
    procs = {k: v["serviceName"] for k, v in t["processes"].items()}
    spans = t["spans"]
    def kind(s):
        return next((x["value"] for x in s.get("tags", []) if x["key"] == "span.kind"), "").upper()
    def tag(s, key):
        return next((str(x["value"]) for x in s.get("tags", []) if x["key"] == key), None)
    def parent(s):
        return next((r["spanID"] for r in s.get("references", []) if r["refType"] == "CHILD_OF"), None)
    def find(svc, k):
        m = [s for s in spans if procs[s["processID"]] == svc and kind(s) == k]
        return m[0] if len(m) == 1 else None
    if len(spans) != 5:
        errors.append(f"{t['traceID']}: {len(spans)} spans"); continue
    chain = [find("front-proxy", "SERVER"), find("front-proxy", "CLIENT"), find("service1", "SERVER"),
             find("service1", "CLIENT"), find("service2", "SERVER")]
    if None in chain:
        errors.append(f"{t['traceID']}: hops missing"); continue
    if any(parent(chain[i + 1]) != chain[i]["spanID"] for i in range(4)):
        errors.append(f"{t['traceID']}: parent links broken"); continue
    if len({s["spanID"] for s in spans}) != 5:
        errors.append(f"{t['traceID']}: span ids shared"); continue
    if any(tag(s, "http.status_code") != "200" for s in spans):
        errors.append(f"{t['traceID']}: status codes"); continue
    if chain[1]["operationName"].lower() != "routetoservice1":
        errors.append(f"{t['traceID']}: front CLIENT named {chain[1]['operationName']}"); continue
    if chain[3]["operationName"].lower() != want_s1_client.lower():
        errors.append(f"{t['traceID']}: service1 CLIENT named {chain[3]['operationName']}"); continue
    print(t["traceID"])
    sys.exit(0)
print("; ".join(errors) or "no new trace", file=sys.stderr)
sys.exit(1)
PY
)

SEEN_TRACES=""
# assert_trace NAME [SECONDS] — send requests until Jaeger holds a new, complete trace whose
# service1 CLIENT span is named NAME.
assert_trace() {
	local want=$1 limit=${2:-120} t0=$SECONDS body id
	while ((SECONDS - t0 < limit)); do
		body=$(curl -fsS --max-time 15 http://127.0.0.1:18080/go) || fail "request through the client failed"
		[[ "$body" == *"front-proxy"* && "$body" == *"service2"* ]] || fail "unexpected answer: $body"
		sleep 3
		if id=$(curl -fsS --max-time 10 "http://127.0.0.1:16686/api/traces?service=front-proxy&limit=50&lookback=1h" |
			python3 -c "$JAEGER_ASSERT" "$want" "$SEEN_TRACES" 2>"$WORK/assert.err"); then
			SEEN_TRACES+=",$id"
			log "ok: trace $id: front-proxy → (routeToService1) → service1 → ($want) → service2, 5 spans"
			return 0
		fi
	done
	fail "no complete trace with service1 CLIENT '$want' in Jaeger: $(cat "$WORK/assert.err")"
}

trace_and_update() {
	port_forward deploy/client 18080:8080 "$DEMO_NS"
	port_forward svc/jaeger-query 16686:16686 "$SYSTEM_NS"
	log "==> the full trace in Jaeger"
	assert_trace checkStock

	log "==> TracedService update renames service1's outbound span, without a redeploy"
	local before after
	before=$(k -n "$DEMO_NS" get pod -l app=service1 -o jsonpath='{.items[*].metadata.uid}/{.items[*].status.containerStatuses[*].restartCount}')
	k -n "$DEMO_NS" patch tsvc service1 --type json \
		-p '[{"op":"replace","path":"/spec/operations/0/name","value":"checkInventory"}]'
	# The operator re-renders the ConfigMap at once; the kubelet refreshes the mounted file
	# within its sync period (up to about a minute), then the proxy hot-reloads it.
	assert_trace checkInventory 240
	after=$(k -n "$DEMO_NS" get pod -l app=service1 -o jsonpath='{.items[*].metadata.uid}/{.items[*].status.containerStatuses[*].restartCount}')
	[[ "$before" == "$after" ]] || fail "service1 was redeployed or restarted ($before → $after)"
}

bare_pod() { # name [label=value]
	local labels="{app: $1}"
	[[ -z "${2:-}" ]] || labels="{app: $1, ${2%%=*}: \"${2#*=}\"}"
	k apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $DEMO_NS, labels: $labels}
spec:
  containers:
    - name: app
      image: sidetrace/demo-app:$APP_VERSION
      imagePullPolicy: Never
      args: ["--name=$1"]
EOF
}

opt_out() {
	log "==> a pod labelled sidetrace.dev/inject=false has no sidecar"
	bare_pod opted-out sidetrace.dev/inject=false
	local names
	names=$(containers_of "$DEMO_NS" opted-out)
	[[ " $names " != *" sidetrace-"* ]] || fail "opted-out pod injected: [$names]"
	[[ -z "$(k -n "$DEMO_NS" get pod opted-out -o jsonpath='{.metadata.annotations.sidetrace\.dev/status}')" ]] ||
		fail "opted-out pod carries sidetrace.dev/status"
	log "ok: opted-out pod has [$names]"
}

webhook_loss() {
	log "==> injector deleted, failurePolicy Ignore: pods are still created, untraced"
	[[ "$(k get mutatingwebhookconfiguration sidetrace-injector -o jsonpath='{.webhooks[0].failurePolicy}')" == Ignore ]] ||
		fail "the chart's default failurePolicy is not Ignore"
	k -n "$SYSTEM_NS" delete deploy sidetrace-injector --wait=true
	poll 120 "injector pods gone" bash -c \
		"test -z \"\$('$KUBECTL' -n $SYSTEM_NS get pods -l app.kubernetes.io/name=sidetrace-injector -o name)\""
	local t0=$SECONDS names
	bare_pod without-webhook
	names=$(containers_of "$DEMO_NS" without-webhook)
	[[ " $names " != *" sidetrace-proxy "* ]] || fail "injected with the injector gone?"
	k -n "$DEMO_NS" wait --for=condition=Ready pod/without-webhook --timeout="$WAIT"
	log "ok: pod admitted and Ready without the webhook in $((SECONDS - t0))s ([$names])"
}

uninstall() {
	log "==> helm uninstall leaves nothing of the release behind"
	"$HELM" uninstall sidetrace --namespace "$SYSTEM_NS" --wait --timeout 3m
	poll 120 "release pods gone" bash -c \
		"test -z \"\$('$KUBECTL' -n $SYSTEM_NS get pods -o name)\""
	local left=""
	k get mutatingwebhookconfiguration sidetrace-injector >/dev/null 2>&1 && left+=" mutatingwebhookconfiguration/sidetrace-injector"
	left+=" $(k get clusterrole,clusterrolebinding -l app.kubernetes.io/part-of=sidetrace -o name | tr '\n' ' ')"
	left+=" $(k -n "$SYSTEM_NS" get deploy,svc,sa,secret,configmap,pdb,role,rolebinding -o name |
		{ grep -v -E '^(serviceaccount/default|configmap/kube-root-ca.crt)$' || true; } | tr '\n' ' ')"
	left=$(xargs <<<"$left")
	[[ -z "$left" ]] || fail "left after helm uninstall: $left"
	log "ok: nothing left (the CRD stays, as Helm keeps crds/; leases: $(k -n "$SYSTEM_NS" get lease -o name | xargs))"
}

main() {
	preflight
	trap cleanup EXIT
	APP_VERSION=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$ROOT/helm/sidetrace/Chart.yaml")
	log "cluster ${EXISTING:-$CLUSTER}, images tag $APP_VERSION, kubectl $KUBECTL, helm $HELM, work dir $WORK"
	if [[ -z "$EXISTING" ]]; then
		create_cluster
		load_images
	else
		log "existing cluster ($KUBECONFIG): its runtime must already hold the images (make images)"
	fi
	install_chart
	deploy_demo
	trace_and_update
	opt_out
	webhook_loss
	uninstall
}

main "$@"
