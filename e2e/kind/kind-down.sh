#!/usr/bin/env bash
# e2e/kind/kind-down.sh — delete the suite's kind cluster and its state directory.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE="${SIDETRACE_CACHE:-$HOME/.cache/sidetrace}"
DIR="${SIDETRACE_KIND_DIR:-/var/lib/sidetrace-kind}"
NAME="${SIDETRACE_KIND_CLUSTER:-sidetrace-e2e}"
LOG_TAG=kind-down
# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"
KIND=$(command -v kind || echo "$CACHE/bin/kind")
if [[ -x "$KIND" ]] && "$KIND" get clusters 2>/dev/null | grep -qxF "$NAME"; then
	"$KIND" delete cluster --name "$NAME"
fi
rm -rf "$DIR"
log "kind cluster $NAME gone"
