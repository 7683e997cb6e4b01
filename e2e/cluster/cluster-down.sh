#!/usr/bin/env bash
# cluster-down.sh — stop the one-node cluster and remove everything it made (`make cluster-down`).
#
#   e2e/cluster/cluster-down.sh [--keep-logs]
#
# In order: the kubelet (so it restarts nothing), every container process (by the pids in the
# cluster's kubepods cgroups), containerd's shims (the processes whose command line names this
# cluster's containerd socket), the components cluster-up started (by the pids it recorded), every
# mount under the cluster's directories, the kubepods cgroups, the network namespace (with its
# iptables rules, veth and bridge), then the directories. Logs are copied to
# $CACHE/cluster-logs/<time>/ first (with --keep-logs, or always when a component had failed).
# Safe to run when nothing is up.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T_START=$SECONDS
# shellcheck source=e2e/cluster/lib.sh
source "$HERE/lib.sh"

[[ $(id -u) -eq 0 ]] || die "needs root"

KEEP_LOGS=0
[[ "${1:-}" != --keep-logs ]] || KEEP_LOGS=1

NETNS=""
HOST_IF=""
for f in "$ENV_FILE" "$ENV_FILE.partial"; do
	if [[ -s "$f" ]]; then
		NETNS=$(sed -n 's/^NETNS=//p' "$f")
		HOST_IF=$(sed -n 's/^HOST_IF=//p' "$f")
	fi
done

# stop_pid NAME PID — TERM, up to 10s, then KILL.
stop_pid() {
	local name=$1 pid=$2 i
	alive "$pid" || return 0
	kill -TERM "$pid" 2>/dev/null
	for i in $(seq 1 40); do
		alive "$pid" || {
			log "    stopped $name (pid $pid)"
			return 0
		}
		sleep 0.25
	done
	kill -KILL "$pid" 2>/dev/null
	log "    killed $name (pid $pid)"
}

stop_component() {
	local pid
	pid=$(pid_of "$1")
	[[ -z "$pid" ]] || stop_pid "$1" "$pid"
}

# Container processes: whatever is in the kubelet's kubepods cgroups (cgroup v1 and v2 layouts).
kubepods_pids() {
	find /sys/fs/cgroup -path '*kubepods*' -name cgroup.procs 2>/dev/null | xargs -r cat 2>/dev/null | sort -u
}

# The shims of THIS cluster's containerd: their command line carries its socket path.
shim_pids() {
	local p
	for p in /proc/[0-9]*; do
		if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "containerd-shim-runc-v2.*$CONTAINERD_SOCK"; then
			basename "$p"
		fi
	done
}

main() {
	if [[ ! -d "$CLUSTER_DIR" && -z "$NETNS" ]]; then
		log "no cluster at $CLUSTER_DIR; nothing to do"
		return 0
	fi
	log "stopping the cluster (namespace ${NETNS:-unknown})"
	stop_component kubelet
	stop_component kube-proxy
	local pid
	for pid in $(kubepods_pids); do kill -KILL "$pid" 2>/dev/null; done
	for pid in $(shim_pids); do stop_pid containerd-shim "$pid"; done
	stop_component containerd
	stop_component kube-scheduler
	stop_component kube-controller-manager
	stop_component kube-apiserver
	stop_component etcd

	# Mounts: pod volumes, rootfs overlays, shm, netns bind mounts; deepest first.
	local m n=0
	while read -r m; do
		umount -l "$m" 2>/dev/null && n=$((n + 1))
	done < <(awk '{print $5}' /proc/self/mountinfo | grep -E "^($CLUSTER_DIR|$CLUSTER_RUN)(/|$)" | sort -r)
	log "    unmounted $n mounts"

	# Empty kubepods cgroups, deepest first (rmdir only succeeds on empty ones).
	find /sys/fs/cgroup -depth -type d -path '*kubepods*' -exec rmdir {} \; 2>/dev/null
	if find /sys/fs/cgroup -type d -path '*kubepods*' 2>/dev/null | grep -q .; then
		log "    WARNING: some kubepods cgroups remain (processes still exiting?)"
	fi

	if [[ -n "$NETNS" ]] && ip netns list | grep -qw "$NETNS"; then
		ip netns del "$NETNS" && log "    deleted network namespace $NETNS (its iptables, bridge, veth)"
	fi
	if [[ -n "$HOST_IF" ]] && ip link show "$HOST_IF" >/dev/null 2>&1; then ip link del "$HOST_IF"; fi

	if [[ $KEEP_LOGS == 1 && -d "$LOGDIR" ]]; then
		local keep
		keep="$CACHE/cluster-logs/$(date -u +%Y%m%dT%H%M%SZ)"
		mkdir -p "$keep/pods" && cp -a "$LOGDIR/." "$keep/" && log "    logs kept in $keep"
		cp -a /var/log/pods/. "$keep/pods/" 2>/dev/null || true
	fi
	# Paths the kubelet and libcni hard-code outside our directories: container logs (only a
	# kubelet writes /var/log/pods and /var/log/containers, and a host for this cluster runs no other) and
	# libcni's result cache for our network and containerd's loopback ("<network>-<container>-<if>").
	find /var/log/containers -maxdepth 1 -type l -lname '/var/log/pods/*' -delete 2>/dev/null
	rm -rf /var/log/pods/* 2>/dev/null
	rm -f /var/lib/cni/results/sidetrace-* /var/lib/cni/results/cni-loopback-* 2>/dev/null
	rm -rf "$CLUSTER_RUN" "$CLUSTER_DIR"
	log "cluster down in $((SECONDS - T_START))s"
}

main "$@"
