# e2e/cluster/lib.sh — shared by cluster-up.sh and cluster-down.sh (sourced, not run).
#
# The one-node cluster's layout. Everything the cluster writes lives in two directories, so
# cluster-down can remove it all:
#   $CLUSTER_DIR (default /var/lib/sidetrace-cluster): pki, kubeconfigs, etcd data, containerd
#       root, kubelet root, CNI config and IPAM state, logs/, and `env` (what the tests read);
#   $CLUSTER_RUN (default /run/sidetrace-cluster): containerd state and sockets, pod netns mounts.
# Addresses (nothing routes out of the node's namespace; it has no default route):
#   veth host side 10.250.251.1/30  <->  node 10.250.251.2/30 (apiserver, kubelet, node IP)
#   Service ClusterIPs 10.251.0.0/24 (routed onto the pod bridge, where unmatched packets die)
#   pods 10.252.0.0/24 on bridge cni0 (gateway 10.252.0.1)

# shellcheck disable=SC2034  # the variables are used by the scripts that source this file
CACHE="${SIDETRACE_CACHE:-$HOME/.cache/sidetrace}"
BIN="$CACHE/bin"
CLUSTER_DIR="${SIDETRACE_CLUSTER_DIR:-/var/lib/sidetrace-cluster}"
CLUSTER_RUN="${SIDETRACE_CLUSTER_RUN:-/run/sidetrace-cluster}"
LOGDIR="$CLUSTER_DIR/logs"
ENV_FILE="$CLUSTER_DIR/env"
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig"
CONTAINERD_SOCK="$CLUSTER_RUN/containerd/containerd.sock"

NODE_NAME=sidetrace-node
HOST_ADDR=10.250.251.1
NODE_ADDR=10.250.251.2
SERVICE_CIDR=10.251.0.0/24
KUBERNETES_SVC_IP=10.251.0.1
POD_CIDR=10.252.0.0/24
POD_GATEWAY=10.252.0.1
APISERVER_PORT=6443
PAUSE_REF=docker.io/sidetrace/pause:0.1.0

export PATH="$BIN:$PATH:/usr/sbin:/sbin"

LOG_TAG=cluster
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# tail_log NAME — the last lines of a component's log, indented.
tail_log() {
	local f="$LOGDIR/$1.log"
	if [[ -s "$f" ]]; then
		log "last lines of $f:"
		tail -n "${2:-25}" "$f" | sed 's/^/    /' >&2
	else
		log "(no log at $f)"
	fi
}

# The pids the cluster started, one "NAME PID" per line.
PIDS_FILE="$CLUSTER_DIR/pids"

pid_of() { awk -v n="$1" '$1 == n { print $2 }' "$PIDS_FILE" 2>/dev/null | tail -n1; }

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# Enter the node's NETWORK namespace only. Not `ip netns exec`: that also unshares the mount
# namespace and remounts /sys, which hides /sys/fs/cgroup from the kubelet ("failed to find
# cgroup mounts") and would keep containerd's rootfs mounts from the kubelet's view.
in_ns() { nsenter --net="/run/netns/$NETNS" -- "$@"; }
