#!/usr/bin/env bash
# cluster-up.sh — a real one-node Kubernetes cluster inside one network namespace (`make cluster-up`).
#
#   e2e/cluster/cluster-up.sh
#
# Starts, in a network namespace `st-<pid>-node` with NO default route: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd (its own root, state and socket), the
# kubelet (cgroupfs driver, bridge + host-local + loopback CNI, pod CIDR 10.252.0.0/24) and
# kube-proxy (iptables mode). Our images (images/build.sh's archives, listed in
# $CACHE/images/images.tsv) and a locally built pause image are imported into containerd's
# k8s.io namespace: nothing is pulled from any registry.
#
# Service discovery: Service environment variables only. There is no DNS add-on (CoreDNS would be
# one more large Go build and image); pods get an empty resolv.conf.
#
# Output: $CLUSTER_DIR/kubeconfig (admin, https://10.250.251.2:6443, reachable from the host over
# a veth), $CLUSTER_DIR/env (NETNS=..., KUBECONFIG=..., for the tests), logs in $CLUSTER_DIR/logs.
# A failure prints the failing component's last log lines and tears the cluster down (logs kept).
# Needs root and the binaries of `e2e/peers.sh controlplane node` (run here when missing).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
T_START=$SECONDS
# shellcheck source=e2e/cluster/lib.sh
source "$HERE/lib.sh"

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, mounts, cgroups, iptables)"

FAILED_COMPONENT=""
on_exit() {
	local rc=$?
	if [[ $rc -ne 0 ]]; then
		log "cluster-up FAILED (exit $rc)"
		[[ -z "$FAILED_COMPONENT" ]] || tail_log "$FAILED_COMPONENT" 30
		if [[ "${SIDETRACE_KEEP_CLUSTER:-0}" != 1 && -s "$ENV_FILE.partial" ]]; then
			log "tearing the partial cluster down (SIDETRACE_KEEP_CLUSTER=1 keeps it); logs stay in $LOGDIR"
			"$HERE/cluster-down.sh" --keep-logs || true
		fi
	fi
}
trap on_exit EXIT

# wait_for WHAT COMPONENT SECONDS CMD... — poll CMD; fail with COMPONENT's log if it dies or times out.
wait_for() {
	local what=$1 comp=$2 secs=$3 t0=$SECONDS pid
	shift 3
	pid=$(pid_of "$comp")
	until "$@" >/dev/null 2>&1; do
		if ! alive "$pid"; then
			FAILED_COMPONENT=$comp
			die "$comp (pid $pid) exited while waiting for $what"
		fi
		if ((SECONDS - t0 > secs)); then
			FAILED_COMPONENT=$comp
			die "$what not ready after ${secs}s"
		fi
		sleep 0.5
	done
	log "    $what ready after $((SECONDS - t0))s"
}

# start NAME CMD... — start a component inside the namespace, in its own session, logging to
# logs/NAME.log; its pid goes to the pids file (cluster-down kills exactly those).
start() {
	local name=$1
	shift
	setsid nsenter --net="/run/netns/$NETNS" -- "$@" >"$LOGDIR/$name.log" 2>&1 </dev/null &
	echo "$name $!" >>"$PIDS_FILE"
	log "    started $name (pid $!, log $LOGDIR/$name.log)"
}

# ---------------------------------------------------------------------------------------------
prerequisites() {
	local missing=()
	for b in etcd kube-apiserver kube-controller-manager kubectl helm; do
		[[ -x "$BIN/$b" ]] || missing+=("$b")
	done
	if [[ ${#missing[@]} -gt 0 ]]; then
		log "missing ${missing[*]}: running e2e/peers.sh controlplane"
		PEERS_NICE=1 "$ROOT/e2e/peers.sh" controlplane
	fi
	missing=()
	for b in kube-scheduler kubelet kube-proxy containerd ctr containerd-shim-runc-v2 pause; do
		[[ -x "$BIN/$b" ]] || missing+=("$b")
	done
	if [[ ${#missing[@]} -gt 0 ]]; then
		log "missing ${missing[*]}: running e2e/peers.sh node"
		PEERS_NICE=1 "$ROOT/e2e/peers.sh" node
	fi
	command -v runc >/dev/null || die "runc missing (apt-get install runc)"
	for p in bridge host-local loopback; do
		[[ -x /usr/lib/cni/$p ]] || die "CNI plugin /usr/lib/cni/$p missing (apt-get install containernetworking-plugins)"
	done
	command -v buildah >/dev/null || die "buildah missing (apt-get install buildah): it packs the pause image"
}

# ---------------------------------------------------------------------------------------------
# PKI: one CA; the apiserver's serving cert; one admin client cert (system:masters) that every
# component uses — a test cluster, not a hardened one; the service-account key pair.
# ---------------------------------------------------------------------------------------------
pki() {
	local d="$CLUSTER_DIR/pki"
	mkdir -p "$d"
	(
		cd "$d"
		umask 077
		openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 \
			-subj "/CN=sidetrace-cluster-ca" 2>/dev/null
		cat >apiserver.ext <<EOF
subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:$NODE_ADDR,IP:127.0.0.1,IP:$KUBERNETES_SVC_IP
extendedKeyUsage=serverAuth
keyUsage=digitalSignature,keyEncipherment
EOF
		openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
		openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
			-extfile apiserver.ext -out apiserver.crt 2>/dev/null
		printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >client.ext
		openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr \
			-subj "/O=system:masters/CN=sidetrace-cluster-admin" 2>/dev/null
		openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
			-extfile client.ext -out admin.crt 2>/dev/null
		openssl genrsa -out sa.key 2048 2>/dev/null
		openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
	)
	# kubeconfigs: the admin one (node address; the host reaches it over the veth) and the
	# components' (loopback inside the namespace).
	write_kubeconfig "$KUBECONFIG_PATH" "https://$NODE_ADDR:$APISERVER_PORT"
	write_kubeconfig "$CLUSTER_DIR/local.kubeconfig" "https://127.0.0.1:$APISERVER_PORT"
}

write_kubeconfig() {
	local d="$CLUSTER_DIR/pki"
	(
		umask 077
		cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sidetrace
  cluster:
    server: $2
    certificate-authority-data: $(base64 -w0 <"$d/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 <"$d/admin.crt")
    client-key-data: $(base64 -w0 <"$d/admin.key")
contexts:
- name: sidetrace
  context: {cluster: sidetrace, user: admin}
current-context: sidetrace
EOF
	)
}

# ---------------------------------------------------------------------------------------------
# The node's network namespace.
# ---------------------------------------------------------------------------------------------
network() {
	local host_if="st${$}h"
	ip netns add "$NETNS"
	echo "NETNS=$NETNS" >"$ENV_FILE.partial"
	echo "HOST_IF=$host_if" >>"$ENV_FILE.partial"
	ip link add "$host_if" type veth peer name eth0 netns "$NETNS"
	ip addr add "$HOST_ADDR/30" dev "$host_if"
	ip link set "$host_if" up
	in_ns ip link set lo up
	in_ns ip addr add "$NODE_ADDR/30" dev eth0
	in_ns ip link set eth0 up
	# ClusterIPs: locally generated packets need a route before kube-proxy's OUTPUT DNAT can
	# rewrite them (the apiserver calling a webhook Service). The route points at the pod bridge,
	# created here (the CNI bridge plugin adopts it): a packet no Service rule rewrote is ARPed for
	# on the bridge, answered by nobody, and dropped — it never leaves the namespace. (No `dummy`
	# device: not every kernel builds the dummy driver.)
	in_ns ip link add cni0 type bridge
	in_ns ip link set cni0 up
	in_ns ip route add "$SERVICE_CIDR" dev cni0
	in_ns sysctl -qw net.ipv4.ip_forward=1
	# Pod-to-Service-to-pod on one bridge: the reply is bridged, so it must pass iptables to be
	# un-NATed. Per network namespace on this kernel; kube-proxy falls back to masquerading all
	# Service traffic if it is not available.
	if in_ns sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null; then
		BR_NF=1
	else
		BR_NF=0
		log "    bridge-nf-call-iptables unavailable in the namespace: kube-proxy --masquerade-all"
	fi
	in_ns ip route show | sed 's/^/    route: /' >&2
	if in_ns ip route show | grep -q '^default'; then die "the node namespace has a default route"; fi
}

# ---------------------------------------------------------------------------------------------
# Component configuration.
# ---------------------------------------------------------------------------------------------
configs() {
	mkdir -p "$CLUSTER_DIR"/{cni/net.d,cni/ipam,containerd,kubelet,opt} "$CLUSTER_RUN/containerd"
	cat >"$CLUSTER_DIR/cni/net.d/10-sidetrace.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "sidetrace",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CLUSTER_DIR/cni/ipam",
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    }
  ]
}
EOF
	# containerd 2.x config (version 3). runc from Debian, cgroupfs (SystemdCgroup=false: no
	# systemd here), our pause image pinned (never garbage-collected, never pulled).
	cat >"$CLUSTER_DIR/containerd/config.toml" <<EOF
version = 3
root = "$CLUSTER_DIR/containerd/root"
state = "$CLUSTER_RUN/containerd/state"

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "$CLUSTER_DIR/opt"

[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # This machine's root lacks the right to lower oom_score_adj below its own (runc's nsexec
  # fails "failed to update /proc/self/oom_score_adj: Permission denied" for the sandbox's
  # -998): clamp every container's score to containerd's own instead.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '$(command -v runc)'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/usr/lib/cni']
    conf_dir = '$CLUSTER_DIR/cni/net.d'
    max_conf_num = 1

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '$PAUSE_REF'

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
EOF
	cat >"$CLUSTER_DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_ADDR
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
podCIDR: $POD_CIDR
# No DNS add-on: pods get an empty resolv.conf rather than the host's resolvers.
resolvConf: ""
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
  x509: {clientCAFile: $CLUSTER_DIR/pki/ca.crt}
authorization: {mode: AlwaysAllow}
# Images cannot be pulled again here: never garbage-collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
maxPods: 60
# ConfigMap volumes (the TracedService config the proxy reloads) refresh within ~10s, not ~1m.
syncFrequency: 10s
EOF
}

# ---------------------------------------------------------------------------------------------
kubectl_local() { in_ns "$BIN/kubectl" --kubeconfig "$CLUSTER_DIR/local.kubeconfig" "$@"; }

control_plane() {
	local pki="$CLUSTER_DIR/pki"
	start etcd "$BIN/etcd" --name=default --log-level=warn --unsafe-no-fsync \
		--data-dir="$CLUSTER_DIR/etcd" \
		--listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
		--listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
		--initial-cluster=default=http://127.0.0.1:2380
	wait_for "etcd /health" etcd 60 in_ns curl -fsS http://127.0.0.1:2379/health
	start kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
		--bind-address=0.0.0.0 --secure-port="$APISERVER_PORT" --advertise-address="$NODE_ADDR" \
		--service-cluster-ip-range="$SERVICE_CIDR" --client-ca-file="$pki/ca.crt" \
		--tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
		--kubelet-client-certificate="$pki/admin.crt" --kubelet-client-key="$pki/admin.key" \
		--service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--cert-dir="$CLUSTER_DIR/apiserver-certs" --authorization-mode=Node,RBAC \
		--kubelet-preferred-address-types=InternalIP,Hostname \
		--allow-privileged=true --profiling=false --v=1
	wait_for "kube-apiserver /readyz" kube-apiserver 120 kubectl_local get --raw /readyz
	start kube-controller-manager "$BIN/kube-controller-manager" \
		--kubeconfig="$CLUSTER_DIR/local.kubeconfig" \
		--service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
		--service-cluster-ip-range="$SERVICE_CIDR" --cluster-cidr="$POD_CIDR" \
		--allocate-node-cidrs=true --node-cidr-mask-size=24 \
		--controllers='*' --use-service-account-credentials=true --leader-elect=false \
		--bind-address=127.0.0.1 --secure-port=10257 --v=1
	start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$CLUSTER_DIR/local.kubeconfig" \
		--leader-elect=false --bind-address=127.0.0.1 --secure-port=10259 --v=1
	wait_for "kube-scheduler /healthz" kube-scheduler 60 in_ns curl -fsSk https://127.0.0.1:10259/healthz
	wait_for "kube-controller-manager /healthz" kube-controller-manager 60 in_ns curl -fsSk https://127.0.0.1:10257/healthz
}

# ---------------------------------------------------------------------------------------------
ctr_() { "$BIN/ctr" --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

runtime() {
	# PATH: containerd finds containerd-shim-runc-v2 in $BIN.
	start containerd env PATH="$PATH" "$BIN/containerd" --config "$CLUSTER_DIR/containerd/config.toml"
	wait_for "containerd socket" containerd 60 ctr_ version
}

# The pause image, FROM scratch with the static pause binary, as a docker archive.
pause_image() {
	local archive="$CACHE/images/pause-0.1.0.tar" b
	if [[ -s "$archive" && "$archive" -nt "$BIN/pause" ]]; then
		log "    pause image cached ($archive)"
		return
	fi
	mkdir -p "$CACHE/images"
	export CONTAINERS_CONF="${CONTAINERS_CONF:-$CACHE/images/containers.conf}"
	[[ -s "$CONTAINERS_CONF" ]] || unset CONTAINERS_CONF
	b=$(buildah --storage-driver vfs from scratch)
	buildah --storage-driver vfs copy "$b" "$(readlink -f "$BIN/pause")" /pause >/dev/null
	buildah --storage-driver vfs config --entrypoint '["/pause"]' --user 65535:65535 \
		--label org.opencontainers.image.title=sidetrace-pause "$b"
	buildah --storage-driver vfs commit -q "$b" "$PAUSE_REF" >/dev/null
	buildah --storage-driver vfs rm "$b" >/dev/null
	rm -f "$archive"
	buildah --storage-driver vfs push -q "$PAUSE_REF" "docker-archive:$archive:$PAUSE_REF"
	log "    pause image built: $archive ($(du -h "$archive" | cut -f1))"
}

import_images() {
	local tsv="$CACHE/images/images.tsv" name ref archive n=1
	pause_image
	ctr_ images import --no-unpack=false "$CACHE/images/pause-0.1.0.tar" >/dev/null
	if [[ -s "$tsv" ]]; then
		while IFS=$'\t' read -r name ref archive; do
			[[ -n "$archive" && -s "$archive" ]] || {
				log "    WARNING: $name: archive '$archive' missing (make images)"
				continue
			}
			ctr_ images import "$archive" >/dev/null
			n=$((n + 1))
		done <"$tsv"
	else
		log "    WARNING: no $tsv: only the pause image is loaded. Run 'make images' (the chart and demo tests need them)"
	fi
	log "    $n images imported:"
	ctr_ images ls -q | grep -v '^sha256:' | sed 's/^/      /' >&2
}

# ---------------------------------------------------------------------------------------------
node() {
	start kubelet "$BIN/kubelet" --config="$CLUSTER_DIR/kubelet/config.yaml" \
		--kubeconfig="$CLUSTER_DIR/local.kubeconfig" --hostname-override="$NODE_NAME" \
		--node-ip="$NODE_ADDR" --root-dir="$CLUSTER_DIR/kubelet/root" \
		--cert-dir="$CLUSTER_DIR/kubelet/pki" --v=1
	local masq=()
	[[ $BR_NF == 1 ]] || masq=(--masquerade-all)
	start kube-proxy "$BIN/kube-proxy" --kubeconfig="$CLUSTER_DIR/local.kubeconfig" \
		--hostname-override="$NODE_NAME" --proxy-mode=iptables --cluster-cidr="$POD_CIDR" \
		--bind-address="$NODE_ADDR" --metrics-bind-address=127.0.0.1:10249 \
		--healthz-bind-address=127.0.0.1:10256 \
		--conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
		--conntrack-tcp-timeout-close-wait=0 --iptables-localhost-nodeports=false "${masq[@]}" --v=1
	wait_for "node $NODE_NAME registered" kubelet 90 kubectl_local get node "$NODE_NAME"
	wait_for "node $NODE_NAME Ready" kubelet 120 kubectl_local wait --for=condition=Ready \
		"node/$NODE_NAME" --timeout=2s
	wait_for "kube-proxy /healthz" kube-proxy 60 in_ns curl -fsS http://127.0.0.1:10256/healthz
	wait_for "default ServiceAccount" kube-controller-manager 60 kubectl_local get serviceaccount default
}

# ---------------------------------------------------------------------------------------------
main() {
	if [[ -s "$ENV_FILE" || -s "$ENV_FILE.partial" ]]; then
		log "a cluster (or its remains) exists: running cluster-down first"
		"$HERE/cluster-down.sh"
	fi
	mkdir -p "$CLUSTER_DIR" "$LOGDIR" "$CLUSTER_RUN"
	: >"$PIDS_FILE"
	NETNS="st-$$-node"
	log "cluster dir $CLUSTER_DIR, run dir $CLUSTER_RUN, namespace $NETNS, logs $LOGDIR"
	timed "prerequisites (peers.sh controlplane node when missing)" prerequisites
	timed "PKI and kubeconfigs" pki
	timed "network namespace $NETNS (no default route)" network
	timed configs configs
	timed "control plane (etcd, apiserver, controller-manager, scheduler)" control_plane
	timed "containerd $("$BIN/containerd" --version | awk '{print $3}')" runtime
	timed "images into containerd (k8s.io)" import_images
	timed "kubelet and kube-proxy" node
	{
		cat "$ENV_FILE.partial"
		echo "KUBECONFIG=$KUBECONFIG_PATH"
		echo "LOCAL_KUBECONFIG=$CLUSTER_DIR/local.kubeconfig"
		echo "CONTAINERD_SOCK=$CONTAINERD_SOCK"
		echo "NODE_NAME=$NODE_NAME"
		echo "NODE_ADDR=$NODE_ADDR"
		echo "SERVICE_CIDR=$SERVICE_CIDR"
		echo "POD_CIDR=$POD_CIDR"
		echo "DNS=none"
	} >"$ENV_FILE"
	rm -f "$ENV_FILE.partial"
	log "cluster up in $((SECONDS - T_START))s; disk: $(du -sh "$CLUSTER_DIR" 2>/dev/null | cut -f1) in $CLUSTER_DIR"
	log "use it:  KUBECONFIG=$KUBECONFIG_PATH kubectl get pods -A   (kubectl: $BIN/kubectl)"
	log "inside:  ip netns exec $NETNS ...    stop: make cluster-down"
}

main "$@"
