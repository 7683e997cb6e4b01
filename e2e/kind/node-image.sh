#!/usr/bin/env bash
# e2e/kind/node-image.sh — kind's node image for the pinned Kubernetes version, built offline.
#
#   e2e/kind/node-image.sh        prints the image's name on stdout once the Docker engine holds it
#
# kind's own node images are pulled from a registry; a machine that cannot pull (CI here) builds
# the same thing from parts it can reach:
#   - a Debian 12 root filesystem (debootstrap, minbase) with the packages kind's base image
#     installs that a node needs here: systemd, iptables, nftables, conntrack, iproute2, ...,
#     runc and the CNI plugins (Debian's, as the one-node cluster uses);
#   - kind's base-image files (entrypoint, systemd units, containerd and kubelet configuration),
#     read from the kind module at build time (`go mod download sigs.k8s.io/kind@$KIND_VERSION`);
#   - containerd, kubeadm, kubelet, kubectl and the control-plane binaries from the peer cache
#     (e2e/peers.sh node kind controlplane), each control-plane image assembled FROM scratch with
#     the exact tag kubeadm asks for (`kubeadm config images list`), CoreDNS and pause likewise,
#     kube-proxy on the base filesystem (it needs iptables and conntrack);
#   - those images put into the node's containerd the way `kind build node-image` does (an
#     import with --no-unpack into a running containerd, then `docker commit`), so that nothing
#     is pulled when the cluster starts.
# kind's own build (`kind build node-image`) pulls CoreDNS, etcd, pause and kindnetd inside its
# build container, which cannot work offline; hence this direct build.
#
# Networking differs from kind's default image in one way: instead of kindnetd (a separate image
# and module), /kind/manifests/default-cni.yaml is a ConfigMap that documents a static bridge
# conflist baked into the image (/etc/cni/net.d). That serves a one-node cluster, which is what
# the suite creates; a multi-node cluster needs kind's own image.
#
# Cached by a recipe key (versions + this script + kind's files): the Docker engine's image, and
# `docker save` archives under $SIDETRACE_CACHE/kind/ that a new engine loads instead of
# rebuilding. Root; needs a running Docker engine (e2e/kind/engine.sh) and debootstrap.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE="${SIDETRACE_CACHE:-$HOME/.cache/sidetrace}"
BIN="$CACHE/bin"
OUT="$CACHE/kind"
LOG_TAG=node-image
# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"
export PATH="$PATH:/usr/sbin:/sbin:/usr/local/go/bin"
export GOFLAGS="-mod=mod" GOTOOLCHAIN=local

# The versions pinned for every tier, read from the one place they are written.
eval "$(sed -n -E 's/^(K8S_VERSION|KIND_VERSION|COREDNS_VERSION|CONTAINERD_VERSION)=([^ ]+).*/\1=\2/p' "$ROOT/e2e/peers.sh")"
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# kind's base image package list (images/base/Dockerfile), less what a node here does not use:
# fuse-overlayfs (rootless), nfs-common and open-iscsi (volume types); plus runc and the
# CNI plugins, which kind builds from source and Debian packages.
PACKAGES=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,runc,containernetworking-plugins

for b in kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy \
	etcd coredns containerd ctr containerd-shim-runc-v2 pause; do
	[[ -x "$BIN/$b" ]] || die "$BIN/$b is missing (e2e/peers.sh controlplane node kind)"
done
command -v debootstrap >/dev/null 2>&1 || {
	log "installing Debian packages: debootstrap"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

KIND_DIR=$(go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)
KIND_FILES="$KIND_DIR/images/base/files"
[[ -f "$KIND_FILES/usr/local/bin/entrypoint" ]] || die "no kind base-image files in $KIND_FILES"

recipe_key() {
	{
		echo "$K8S_VERSION $KIND_VERSION $COREDNS_VERSION $CONTAINERD_VERSION $DEBIAN_SUITE $PACKAGES"
		cat "${BASH_SOURCE[0]}"
		(cd "$KIND_FILES" && find . -type f | sort | xargs sha256sum)
		for b in kubeadm kubelet kube-apiserver etcd coredns containerd pause; do readlink "$BIN/$b" || echo "$b"; done
	} | sha256sum | cut -c1-12
}
KEY=$(recipe_key)
BASE_KEY=$(echo "$DEBIAN_SUITE $PACKAGES" | sha256sum | cut -c1-12)
BASE_IMAGE="sidetrace.local/kind-base:$DEBIAN_SUITE-$BASE_KEY"
NODE_IMAGE="sidetrace.local/kind-node:$K8S_VERSION-$KEY"
NODE_ARCHIVE="$OUT/kind-node-$K8S_VERSION-$KEY.tar"
mkdir -p "$OUT"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }
# docker build TAG DIR, its output kept for when it fails (the classic builder: it needs no
# BuildKit component, and nothing here needs BuildKit's features).
build() {
	DOCKER_BUILDKIT=0 docker build -t "$1" "$2" >"$WORK/build.log" 2>&1 || {
		tail -30 "$WORK/build.log" >&2
		die "docker build of $1 failed (log above)"
	}
}

if have_image "$NODE_IMAGE"; then
	log "node image $NODE_IMAGE present"
	echo "$NODE_IMAGE"
	exit 0
fi
if [[ -s "$NODE_ARCHIVE" ]]; then
	log "loading $NODE_ARCHIVE"
	docker load -i "$NODE_ARCHIVE" >/dev/null
	have_image "$NODE_IMAGE" || die "$NODE_ARCHIVE did not hold $NODE_IMAGE"
	echo "$NODE_IMAGE"
	exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sidetrace-node-image.XXXXXX")
BUILDER=""
cleanup() {
	[[ -z "$BUILDER" ]] || docker rm -f "$BUILDER" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

# 1. The base root filesystem.
if ! have_image "$BASE_IMAGE"; then
	base_tar="$OUT/kind-base-$DEBIAN_SUITE-$BASE_KEY.tar"
	if [[ ! -s "$base_tar" ]]; then
		log "debootstrap $DEBIAN_SUITE (minbase + $PACKAGES)"
		t0=$SECONDS
		debootstrap --variant=minbase --include="$PACKAGES" "$DEBIAN_SUITE" "$WORK/rootfs" "$DEBIAN_MIRROR" \
			>"$WORK/debootstrap.log" 2>&1 || {
			tail -20 "$WORK/debootstrap.log" >&2
			die "debootstrap failed (log above)"
		}
		rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
		tar -C "$WORK/rootfs" --numeric-owner -cf "$base_tar.tmp" .
		mv -f "$base_tar.tmp" "$base_tar"
		rm -rf "$WORK/rootfs"
		log "base filesystem in $((SECONDS - t0))s ($(du -m "$base_tar" | cut -f1)MB)"
	fi
	docker import "$base_tar" "$BASE_IMAGE" >/dev/null
fi

# 2. The node filesystem: kind's base-image files, containerd and the Kubernetes node binaries.
ctx="$WORK/node"
mkdir -p "$ctx/files" "$ctx/bin" "$ctx/kube"
cp -a "$KIND_FILES/." "$ctx/files/"
# The module cache is read-only; the image wants kind's modes (0644 files, 0755 programs).
chmod -R u+w,go-w "$ctx/files"
find "$ctx/files" -type f -exec chmod 0644 {} +
chmod 0755 "$ctx/files/usr/local/bin/"* "$ctx/files/kind/bin/"*
for b in containerd ctr containerd-shim-runc-v2; do cp -L "$BIN/$b" "$ctx/bin/$b"; done
for b in kubeadm kubelet kubectl; do cp -L "$BIN/$b" "$ctx/kube/$b"; done
# One bridge for the node's pods, in kind's default pod subnet (the node's podCIDR 10.244.0.0/24).
cat >"$ctx/10-sidetrace-bridge.conflist" <<'CNI'
{
  "cniVersion": "1.0.0",
  "name": "kind-bridge",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
cat >"$ctx/default-cni.yaml" <<'YAML'
# The node's pod network is a static bridge conflist baked into this node image
# (/etc/cni/net.d/10-sidetrace-bridge.conflist, built by sidetrace's e2e/kind/node-image.sh);
# no CNI daemon runs. One node only.
apiVersion: v1
kind: ConfigMap
metadata:
  name: sidetrace-kind-cni
  namespace: kube-system
data:
  cni: static bridge conflist in the node image, pod subnet 10.244.0.0/24
YAML
cat >"$ctx/default-storage.yaml" <<'YAML'
# No dynamic provisioner in the offline node image: volumes are hostPath or emptyDir.
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
YAML
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $BASE_IMAGE
COPY files/ /
COPY bin/ /usr/local/bin/
COPY kube/ /usr/bin/
COPY 10-sidetrace-bridge.conflist /etc/cni/net.d/
COPY default-cni.yaml default-storage.yaml /kind/manifests/
# As kind's images/base/Dockerfile: systemd as init with only what a node needs, containerd and
# the kubelet enabled, the base OCI spec with kind's product-uuid hook.
RUN chmod 0755 /kind /kind/bin /kind/bin/* /usr/local/bin/* /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl \\
    && find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete \\
    && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
       /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
       /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
    && echo ReadKMsg=no >> /etc/systemd/journald.conf \\
    && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \\
    && systemctl mask systemd-binfmt.service \\
    && mkdir -p /etc/kubernetes/manifests /opt/cni/bin \\
    && for p in /usr/lib/cni/*; do ln -sf "\$p" /opt/cni/bin/; done \\
    && ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \\
       | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json \\
    && echo -n "$K8S_VERSION" > /kind/version \\
    && containerd --version && runc --version && kubelet --version
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
DOCKERFILE
log "node filesystem"
build "$NODE_IMAGE-stage" "$ctx"

# 3. The images kubeadm and the kubelet run, with the exact tags they ask for.
mapfile -t wanted < <(docker run --rm --entrypoint kubeadm "$NODE_IMAGE-stage" \
	config images list --kubernetes-version "$K8S_VERSION")
sandbox=$(sed -n -E 's/^[[:space:]]*sandbox_image[[:space:]]*=[[:space:]]*"([^"]+)".*/\1/p' "$KIND_FILES/etc/containerd/config.toml")
[[ -n "$sandbox" ]] || die "no sandbox_image in kind's containerd config"
wanted+=("$sandbox")
imgctx="$WORK/images"
image_from_binary() { # TAG BINARY PATH-IN-IMAGE [BASE]
	local tag=$1 binary=$2 path=$3 base=${4:-scratch} dir
	dir="$imgctx/$(echo "$tag" | tr '/:' '__')"
	mkdir -p "$dir"
	cp -L "$BIN/$binary" "$dir/$binary"
	printf 'FROM %s\nCOPY %s %s\nENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' "$base" "$binary" "$path" >"$dir/Dockerfile"
	[[ "$binary" == coredns || "$binary" == pause ]] && printf 'ENTRYPOINT ["%s"]\n' "$path" >>"$dir/Dockerfile"
	build "$tag" "$dir"
}
tags=()
for tag in "${wanted[@]}"; do
	name=${tag%:*}
	case "${name##*/}" in
	kube-apiserver | kube-controller-manager | kube-scheduler)
		image_from_binary "$tag" "${name##*/}" "/usr/local/bin/${name##*/}" ;;
	kube-proxy) image_from_binary "$tag" kube-proxy /usr/local/bin/kube-proxy "$BASE_IMAGE" ;;
	etcd) image_from_binary "$tag" etcd /usr/local/bin/etcd ;;
	coredns) image_from_binary "$tag" coredns /coredns ;;
	pause) image_from_binary "$tag" pause /pause ;;
	*) die "kubeadm asks for an image this build does not make: $tag" ;;
	esac
	tags+=("$tag")
done
log "images: ${tags[*]}"
docker save -o "$WORK/images.tar" "${tags[@]}"

# 4. Into the node's containerd, as kind's builder does it, then commit the node image.
BUILDER=$(docker run -d --privileged --entrypoint sleep "$NODE_IMAGE-stage" infinity)
docker exec "$BUILDER" bash -c 'nohup containerd >/tmp/containerd.log 2>&1 &'
for _ in $(seq 1 30); do
	docker exec "$BUILDER" ctr version >/dev/null 2>&1 && break
	sleep 1
done
docker exec "$BUILDER" ctr version >/dev/null || die "containerd did not start in the build container"
docker exec -i "$BUILDER" ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
	--all-platforms --no-unpack --digests - <"$WORK/images.tar" >/dev/null
imported=$(docker exec "$BUILDER" ctr --namespace=k8s.io images list -q)
for tag in "${tags[@]}"; do
	grep -qxF "$tag" <<<"$imported" || grep -qxF "docker.io/$tag" <<<"$imported" ||
		die "$tag is not in the node's containerd after the import"
done
docker exec "$BUILDER" pkill containerd || true
docker exec "$BUILDER" rm -f /tmp/containerd.log
docker commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' \
	"$BUILDER" "$NODE_IMAGE" >/dev/null
docker rm -f "$BUILDER" >/dev/null
BUILDER=""
docker rmi "$NODE_IMAGE-stage" "${tags[@]}" >/dev/null 2>&1 || true
docker save -o "$NODE_ARCHIVE.tmp" "$NODE_IMAGE"
mv -f "$NODE_ARCHIVE.tmp" "$NODE_ARCHIVE"
# Older recipes' archives are of no use any more.
find "$OUT" -maxdepth 1 -name 'kind-*.tar' ! -name "kind-node-$K8S_VERSION-$KEY.tar" \
	! -name "kind-base-$DEBIAN_SUITE-$BASE_KEY.tar" -delete
log "node image $NODE_IMAGE ($(du -m "$NODE_ARCHIVE" | cut -f1)MB archive)"
echo "$NODE_IMAGE"
