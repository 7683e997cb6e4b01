#!/usr/bin/env bash
# e2e/ci-cold.sh — `make ci-cold`: run .ci/run the way CI runs it on a brand-new machine.
#
#   e2e/ci-cold.sh            fresh clone of HEAD, empty HOME, empty caches
#   PURGE_DEBS=1 e2e/ci-cold.sh   ... and first remove the Debian packages a new machine lacks
#                                 and the project installs (root; they are installed again)
#
# What is fresh: a `git clone` of the committed HEAD (uncommitted changes are NOT included) with
# ../shared copied beside it, HOME, the cargo registry and git checkouts (CARGO_HOME), the Go
# module and build caches, Maven's and pip's caches, the peer cache (~/.cache/sidetrace) and the
# target dir. What is kept: the toolchains a new machine comes with (rustup's toolchains under
# RUSTUP_HOME, Go, Java, pyenv's Python), found through the current PATH.
#
# Everything lives under $SIDETRACE_COLD_DIR (default /var/tmp/sidetrace-cold), wiped at the
# start; the run's output is in $SIDETRACE_COLD_DIR/ci.log, and the last lines printed are the
# timing of each step. Exit status: .ci/run's.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COLD=${SIDETRACE_COLD_DIR:-/var/tmp/sidetrace-cold}
# Packages a brand-new machine of this kind lacks and the project installs (e2e/peers.sh,
# images/build.sh): removing them proves the install steps.
PURGE=(iptables runc containernetworking-plugins buildah podman gcc-aarch64-linux-gnu
	libc6-dev-arm64-cross qemu-user-static docker.io debootstrap)

LOG_TAG=ci-cold
T_START=0
# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"

[[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]] ||
	log "WARNING: uncommitted changes are not part of the clone (commit first to test them)"

# A cluster or test namespaces left by an earlier run would make this one unlike a new machine.
if [[ $(id -u) -eq 0 ]]; then
	"$ROOT/e2e/cluster/cluster-down.sh" >/dev/null 2>&1 || true
	"$ROOT/e2e/kind/kind-down.sh" >/dev/null 2>&1 || true
fi

log "fresh tree under $COLD"
rm -rf "$COLD"
mkdir -p "$COLD/home"
git clone -q --no-local "$ROOT" "$COLD/main"
if [[ -d "$ROOT/../shared" ]]; then
	cp -r "$ROOT/../shared" "$COLD/shared"
	chmod -R a-w "$COLD/shared"
fi

if [[ "${PURGE_DEBS:-0}" == 1 ]]; then
	[[ $(id -u) -eq 0 ]] || {
		log "PURGE_DEBS=1 needs root"
		exit 2
	}
	log "removing ${PURGE[*]} (reinstalled by the run)"
	DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${PURGE[@]}" >/dev/null 2>&1 || true
	# images/build.sh adds arm64 to dpkg (apt downloads the init image's arm64 iptables). The
	# Rust target stays: RUSTUP_HOME is shared with whoever else uses this machine.
	dpkg --remove-architecture arm64 2>/dev/null && apt-get update -qq >/dev/null 2>&1 || true
	# A new machine has no Docker engine running, no images and no runtime wrapper.
	pkill -TERM -x dockerd 2>/dev/null || true
	# /var/lib/docker may be a mount point of its own (it is on these machines): empty it.
	[[ -d /var/lib/docker ]] && find /var/lib/docker -mindepth 1 -maxdepth 1 -exec rm -rf {} +
	rm -rf /etc/docker /usr/local/libexec/sidetrace
fi

# The toolchains stay where the machine has them; every cache moves to the empty HOME.
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
env_args=(
	HOME="$COLD/home"
	PATH="$PATH"
	RUSTUP_HOME="$rustup_home"
	CARGO_HOME="$COLD/home/.cargo"
	LANG="${LANG:-C.UTF-8}"
	TERM="${TERM:-dumb}"
)
[[ ! -d "$pyenv_root" ]] || env_args+=(PYENV_ROOT="$pyenv_root")

log "bash .ci/run in $COLD/main (output: $COLD/ci.log)"
set +e
(cd "$COLD/main" && env -i "${env_args[@]}" bash .ci/run) 2>&1 | tee "$COLD/ci.log"
rc=${PIPESTATUS[0]}
set -e
log ".ci/run exited $rc; step timings:"
grep -E '^=== \[|^\[peers .*(<==|!!!|FAILED)|^\[images .*(built|ERROR)' "$COLD/ci.log" | sed 's/^/    /' >&2 || true
exit "$rc"
