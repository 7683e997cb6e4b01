#!/usr/bin/env bash
# e2e/kind/run.sh — the cluster suite on a kind cluster (`make e2e-kind`).
#
#   e2e/kind/run.sh
#
# 1. our images for this machine's architecture (images/build.sh --arch host), unless
#    SIDETRACE_KIND_IMAGES_BUILT=1 says the archives are fresh (make test builds them first);
# 2. a kind cluster (e2e/kind/kind-up.sh: Docker engine, kind, node image — kind's own for the
#    pinned Kubernetes version, or one built offline where nothing can be pulled — and our
#    images loaded into the node);
# 3. the cluster suite (e2e/tests/node.rs, the same suite the one-node cluster runs) against it:
#    helm install, the demo topology called by DNS name, the trace read from the Jaeger pod, ...;
# 4. the cluster deleted again (KEEP_CLUSTER=1 keeps it; e2e/kind/kind-down.sh deletes it).
#
# Root (Docker's socket, and the suite enters the node). Exit status: the suite's.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARGO=${CARGO:-cargo}
export SIDETRACE_KIND_DIR="${SIDETRACE_KIND_DIR:-/var/lib/sidetrace-kind}"
LOG_TAG=kind
# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"
[[ $(id -u) -eq 0 ]] || die "needs root (the Docker engine's socket; the suite runs programs in the node)"

if [[ "${SIDETRACE_KIND_IMAGES_BUILT:-0}" != 1 ]]; then
	log "==> images (images/build.sh --arch host)"
	"$ROOT/images/build.sh" --arch host
fi
down() {
	if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
		log "KEEP_CLUSTER=1: the cluster stays (KUBECONFIG=$SIDETRACE_KIND_DIR/kubeconfig; e2e/kind/kind-down.sh deletes it)"
	else
		"$ROOT/e2e/kind/kind-down.sh" || true
	fi
}
trap down EXIT
"$ROOT/e2e/kind/kind-up.sh"
log "==> the cluster suite on kind"
SIDETRACE_CLUSTER_DIR="$SIDETRACE_KIND_DIR" "$CARGO" test -p sidetrace-e2e --test node -- --test-threads=1
