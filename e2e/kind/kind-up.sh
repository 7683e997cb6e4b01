#!/usr/bin/env bash
# e2e/kind/kind-up.sh — a kind cluster for the cluster suite (`make e2e-kind` runs it).
#
# Needs a Docker engine (e2e/kind/engine.sh starts one where none runs) and kind (e2e/peers.sh
# kind builds it from its Go module when it is not on PATH). The node image is kind's default
# for the pinned Kubernetes version where the engine can pull it (KIND_NODE_IMAGE=... names
# another); with SIDETRACE_KIND_OFFLINE=1, or when that pull fails, e2e/kind/node-image.sh
# builds one offline. Our images (images/build.sh's archives, listed in
# $SIDETRACE_CACHE/images/images.tsv) are loaded with `kind load image-archive`.
#
# Output, as the one-node cluster's cluster-up.sh writes it: $SIDETRACE_KIND_DIR (default
# /var/lib/sidetrace-kind)/env with KUBECONFIG=, NODE_NAME=, NODE_CONTAINER= (the node's Docker
# container: `docker exec` there reaches pod IPs and ClusterIPs) and DNS=coredns; the tests
# read it with SIDETRACE_CLUSTER_DIR pointing there. e2e/kind/kind-down.sh deletes the cluster.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE="${SIDETRACE_CACHE:-$HOME/.cache/sidetrace}"
DIR="${SIDETRACE_KIND_DIR:-/var/lib/sidetrace-kind}"
NAME="${SIDETRACE_KIND_CLUSTER:-sidetrace-e2e}"
LOG_TAG=kind-up
# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"
eval "$(sed -n -E 's/^(K8S_VERSION)=([^ ]+).*/\1=\2/p' "$ROOT/e2e/peers.sh")"

timed "Docker engine" "$HERE/engine.sh"
KIND=$(command -v kind || true)
if [[ -z "$KIND" ]]; then
	timed "kind (e2e/peers.sh kind)" "$ROOT/e2e/peers.sh" kind
	KIND="$CACHE/bin/kind"
fi
[[ -x "$CACHE/bin/kubectl" ]] || timed "kubectl, helm (e2e/peers.sh controlplane)" "$ROOT/e2e/peers.sh" controlplane

image=${KIND_NODE_IMAGE:-}
if [[ -z "$image" && "${SIDETRACE_KIND_OFFLINE:-0}" != 1 ]]; then
	image="kindest/node:$K8S_VERSION"
	if ! docker image inspect "$image" >/dev/null 2>&1 && ! timeout 120 docker pull -q "$image" >/dev/null 2>&1; then
		log "cannot pull $image: building the node image offline"
		image=""
	fi
fi
if [[ -z "$image" ]]; then
	image=$("$HERE/node-image.sh")
fi

if "$KIND" get clusters 2>/dev/null | grep -qxF "$NAME"; then
	log "deleting the previous cluster $NAME"
	"$KIND" delete cluster --name "$NAME" >/dev/null
fi
rm -rf "$DIR"
mkdir -p "$DIR"
config="$DIR/kind.yaml"
{
	echo "kind: Cluster"
	echo "apiVersion: kind.x-k8s.io/v1alpha4"
	# Without CAP_SYS_RESOURCE (see e2e/kind/runc-without-sys-resource), runc cannot give pod
	# sandboxes their oom_score_adj of -998; containerd then keeps scores it may set.
	cap_bounding=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
	if ((((16#$cap_bounding) >> 24 & 1) == 0)); then
		echo "containerdConfigPatches:"
		echo "- |-"
		echo '  [plugins."io.containerd.grpc.v1.cri"]'
		echo "    restrict_oom_score_adj = true"
	fi
} >"$config"
timed "kind create cluster $NAME ($image)" "$KIND" create cluster --name "$NAME" --image "$image" \
	--config "$config" --kubeconfig "$DIR/kubeconfig" --wait 5m

load_images() {
	local tsv="$CACHE/images/images.tsv" name ref archive
	[[ -s "$tsv" ]] || die "no $tsv: run make images first"
	while IFS=$'\t' read -r name ref archive; do
		[[ -n "$name" ]] || continue
		[[ -s "$archive" ]] || die "$archive (image $ref) is missing: run make images"
		"$KIND" load image-archive "$archive" --name "$NAME" >/dev/null
		log "  $ref"
	done <"$tsv"
}
timed "our images into the node (kind load image-archive)" load_images

{
	echo "KUBECONFIG=$DIR/kubeconfig"
	echo "NODE_NAME=$NAME-control-plane"
	echo "NODE_CONTAINER=$NAME-control-plane"
	echo "KIND_CLUSTER=$NAME"
	echo "DNS=coredns"
} >"$DIR/env"
log "kind cluster $NAME up; KUBECONFIG=$DIR/kubeconfig; inside: docker exec $NAME-control-plane ...; stop: e2e/kind/kind-down.sh"
