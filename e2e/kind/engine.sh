#!/usr/bin/env bash
# e2e/kind/engine.sh — make sure a Docker engine answers `docker info` (root; for the kind tier).
#
# A running engine (a user's Docker Desktop, a systemd docker.service) is used as it is. Where
# none runs: install Debian's docker.io when dockerd is missing, then start dockerd in the
# background (no systemd on CI machines), logging to $SIDETRACE_CACHE/logs/dockerd.log. Where
# the capability bounding set lacks CAP_SYS_RESOURCE, privileged containers (every kind node)
# cannot start with plain runc; the engine is then started with
# e2e/kind/runc-without-sys-resource as its default runtime (see that file).
#
# Docker's own iptables rules (FORWARD policy DROP) do not reach the other tiers: their bridges
# and clusters live in network namespaces of their own.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE="${SIDETRACE_CACHE:-$HOME/.cache/sidetrace}"
LOG_TAG=engine
# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"
export PATH="$PATH:/usr/sbin:/sbin"

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
	log "Docker engine running ($(docker version --format '{{.Server.Version}}'))"
	exit 0
fi
[[ $(id -u) -eq 0 ]] || die "no Docker engine answers 'docker info', and starting one needs root"

if ! command -v dockerd >/dev/null 2>&1; then
	log "installing Debian packages: docker.io (dockerd, containerd, runc)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

# CAP_SYS_RESOURCE is capability 24.
cap_bounding=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
runtime_args=()
if ((((16#$cap_bounding) >> 24 & 1) == 0)); then
	wrapper=/usr/local/libexec/sidetrace/runc-without-sys-resource
	install -D -m 0755 "$ROOT/e2e/kind/runc-without-sys-resource" "$wrapper"
	command -v jq >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
	log "this host's capability bounding set lacks CAP_SYS_RESOURCE: privileged containers run through $wrapper"
	runtime_args=(--add-runtime "runc-without-sys-resource=$wrapper" --default-runtime runc-without-sys-resource)
fi

mkdir -p "$CACHE/logs"
log "starting dockerd (log: $CACHE/logs/dockerd.log)"
# setsid: the engine outlives this script (and the test run that started it), like a service.
setsid dockerd "${runtime_args[@]}" >>"$CACHE/logs/dockerd.log" 2>&1 </dev/null &
for _ in $(seq 1 60); do
	engine_up && break
	sleep 1
done
engine_up || {
	tail -20 "$CACHE/logs/dockerd.log" >&2
	die "dockerd did not answer 'docker info' within 60s (log above)"
}
log "Docker engine running ($(docker version --format '{{.Server.Version}}'))"
