#!/usr/bin/env bash
# images/build.sh — build sidetrace's container images (`make images`), for linux/amd64 and
# linux/arm64, and optionally push them as multi-arch images or load them into a kind cluster.
#
#   images/build.sh [--arch LIST] [--registry PREFIX [--push | --push-only]] [--kind-load CLUSTER]
#                   [--no-cargo] [--no-export] [NAME...]
#
#   NAME: operator injector proxy init demo-app jaeger (default: all of them; jaeger only when
#   `e2e/peers.sh jaeger` has built ~/.cache/sidetrace/bin/jaeger, else it is skipped loudly).
#   --arch LIST      architectures, comma or space separated: amd64, arm64, or `host` (default
#                    "amd64 arm64"; SIDETRACE_IMAGE_ARCHES). `host` is the quick local loop.
#   --registry P     push to P/sidetrace/<name>:<tag> (SIDETRACE_REGISTRY); the chart's
#                    `images.registry` takes the same P. Credentials: the engine's own login
#                    (`podman login`, `buildah login`, `docker login`) beforehand.
#   --push           push one multi-arch manifest list per image to the registry
#                    (SIDETRACE_PUSH=1); SIDETRACE_PUSH_TLS_VERIFY=false for a plain-http one
#   --push-only      push what an earlier run built into the engine's storage, building nothing
#   --kind-load C    `kind load image-archive` the host-arch archives into kind cluster C
#                    (SIDETRACE_KIND_CLUSTER)
#   --no-cargo       use the release binaries already built (fails when one is missing)
#   --no-export      do not write the archives
#
# What it does, printing each step and its timing:
#   1. installs what a fresh Debian machine lacks, saying what: an image engine (buildah, podman,
#      runc), and for each foreign architecture the Rust target, the cross C toolchain and libc
#      (ring and other C code), qemu-user-static (to run the foreign binaries once as a check)
#      and dpkg's foreign architecture (to download that architecture's iptables);
#   2. builds the release binaries per architecture, statically linked against glibc (RUSTFLAGS
#      -C target-feature=+crt-static with an explicit --target, so build scripts and proc-macros
#      stay dynamic), under `nice` because the machine is shared; then checks each: `file` names
#      the right machine, `readelf` lists no shared library, and `--version` runs (under
#      qemu-<arch>-static for a foreign one);
#   3. assembles one build context per image and architecture under $CACHE/images/ctx and builds
#      images/Containerfile.<name> for linux/<arch> with the first engine that works: docker
#      (engine running), podman, buildah (both with --storage-driver vfs; podman with runc and
#      cgroupfs); everything is FROM scratch since no image can be pulled (and a FROM scratch
#      image with only COPY needs no emulation to build for another architecture);
#   4. exports each as a docker archive $CACHE/images/<name>-<tag>-<arch>.tar tagged
#      docker.io/sidetrace/<name>:<tag> (what the chart's `sidetrace/<name>:<tag>` means to
#      containerd and the kubelet), which `kind load image-archive`, `ctr images import`,
#      `k3d image import`, `minikube image load` and `podman load` all read; lists them in
#      $CACHE/images/images.<arch>.tsv and the host architecture's in images.tsv (name, ref,
#      archive: what the one-node cluster and kind load);
#   5. with --push, pushes <registry>/sidetrace/<name>:<tag> as a manifest list of every built
#      architecture (jaeger is never pushed: the chart uses the Jaeger project's own image).
#
# Why FROM scratch works for the Rust binaries, DNS included (checked, not assumed): static
# glibc cannot dlopen NSS modules, but since glibc 2.34 the `files` and `dns` services are built
# into libc itself, so a +crt-static binary resolves /etc/hosts names and DNS names through the
# pod's resolv.conf (search list and ndots too) in an empty root with no libnss_*.so. Verified on
# this Debian 12 (glibc 2.36) in an empty chroot inside a network namespace against a one-name
# DNS responder; e2e/tests/images.rs re-checks it with the demo app image. The tag tells which:
# the operator/injector reach the apiserver by IP (KUBERNETES_SERVICE_HOST), the proxy resolves
# jaeger-collector.<ns> by cluster DNS. A host-assembled "distroless-like" base (dynamic binary
# + ldd libraries + libnss_*) is therefore not needed; the init image is the exception because
# iptables is a dynamic C program (see Containerfile.init and init_rootfs below).
#
# Env: SIDETRACE_CACHE (default ~/.cache/sidetrace), SIDETRACE_IMAGE_ENGINE=docker|podman|buildah
# (default: the first that works), CARGO (default cargo), CARGO_NICE (default 10).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${SIDETRACE_CACHE:-$HOME/.cache/sidetrace}"
OUT="$CACHE/images"
CARGO="${CARGO:-cargo}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
ALL=(operator injector proxy init demo-app jaeger)
export PATH="$PATH:/usr/sbin:/sbin"

# Image tag: the chart's appVersion, so `helm install` finds the images it names.
APP_VERSION=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$ROOT/helm/sidetrace/Chart.yaml")
SOURCE=$(sed -n 's/^repository[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)
REVISION=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

T_START=$SECONDS
log() { printf '[images %5ss] %s\n' "$((SECONDS - T_START))" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# ---------------------------------------------------------------------------------------------
# Architectures: Debian's names (amd64, arm64), which are also OCI's.
# ---------------------------------------------------------------------------------------------
host_arch() {
	case "$(uname -m)" in
	x86_64) echo amd64 ;;
	aarch64 | arm64) echo arm64 ;;
	*) die "unsupported build host $(uname -m) (amd64 and arm64 are)" ;;
	esac
}
HOST_ARCH=$(host_arch)
triple_of() { case "$1" in amd64) echo x86_64-unknown-linux-gnu ;; arm64) echo aarch64-unknown-linux-gnu ;; esac; }
gnu_of() { case "$1" in amd64) echo x86_64-linux-gnu ;; arm64) echo aarch64-linux-gnu ;; esac; }
qemu_of() { case "$1" in amd64) echo qemu-x86_64-static ;; arm64) echo qemu-aarch64-static ;; esac; }
# What `file` prints for an ELF of that machine.
file_machine_of() { case "$1" in amd64) echo x86-64 ;; arm64) echo "ARM aarch64" ;; esac; }
release_dir() { echo "$TARGET_DIR/$(triple_of "$1")/release"; }

# ---------------------------------------------------------------------------------------------
# Which images, which options.
# ---------------------------------------------------------------------------------------------
DO_CARGO=1
DO_EXPORT=1
DO_BUILD=1
WANT=()
ARCH_LIST="${SIDETRACE_IMAGE_ARCHES:-amd64 arm64}"
REGISTRY="${SIDETRACE_REGISTRY:-}"
PUSH="${SIDETRACE_PUSH:-0}"
KIND_CLUSTER="${SIDETRACE_KIND_CLUSTER:-}"
while [[ $# -gt 0 ]]; do
	arg=$1
	shift
	case "$arg" in
	--no-cargo) DO_CARGO=0 ;;
	--no-export) DO_EXPORT=0 ;;
	--push) PUSH=1 ;;
	--push-only)
		PUSH=1
		DO_BUILD=0
		;;
	--arch | --registry | --kind-load)
		[[ $# -gt 0 ]] || die "$arg needs a value"
		case "$arg" in
		--arch) ARCH_LIST=$1 ;;
		--registry) REGISTRY=$1 ;;
		--kind-load) KIND_CLUSTER=$1 ;;
		esac
		shift
		;;
	-h | --help)
		sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	-*) die "unknown option $arg" ;;
	*)
		[[ " ${ALL[*]} " == *" $arg "* ]] || die "unknown image '$arg' (known: ${ALL[*]})"
		WANT+=("$arg")
		;;
	esac
done
[[ ${#WANT[@]} -gt 0 ]] || WANT=("${ALL[@]}")
[[ -n "$APP_VERSION" ]] || die "no appVersion in helm/sidetrace/Chart.yaml"
ARCHES=()
for a in ${ARCH_LIST//,/ }; do
	[[ $a != host ]] || a=$HOST_ARCH
	case "$a" in amd64 | arm64) ;; *) die "unknown architecture '$a' (amd64, arm64, host)" ;; esac
	[[ " ${ARCHES[*]} " == *" $a "* ]] || ARCHES+=("$a")
done
[[ ${#ARCHES[@]} -gt 0 ]] || die "no architecture to build"
REGISTRY=${REGISTRY%/}
[[ $PUSH != 1 || -n "$REGISTRY" ]] || die "--push needs --registry (REGISTRY=registry.example.com/team)"

# Jaeger: the binary `e2e/peers.sh jaeger` builds (bin/jaeger -> jaeger-v1.75.0), for the
# tests here only, which cannot pull the chart's default (the Jaeger project's own image). It is
# a host binary, so its image is built for the host architecture only, and never pushed.
JAEGER_BIN="$CACHE/bin/jaeger"
JAEGER_TAG=""
if [[ " ${WANT[*]} " == *" jaeger "* ]]; then
	if [[ -x "$JAEGER_BIN" ]]; then
		JAEGER_TAG=$(basename "$(readlink -f "$JAEGER_BIN")")
		JAEGER_TAG=${JAEGER_TAG#jaeger-}
		JAEGER_TAG=${JAEGER_TAG#v}
	else
		log "SKIP jaeger image: $JAEGER_BIN not found (build it with 'e2e/peers.sh jaeger'," \
			"a long Go build); only the tests here need it (the chart defaults to jaegertracing/jaeger)"
		keep=()
		for n in "${WANT[@]}"; do [[ $n == jaeger ]] || keep+=("$n"); done
		WANT=("${keep[@]}")
	fi
fi

tag_of() { if [[ $1 == jaeger ]]; then echo "$JAEGER_TAG"; else echo "$APP_VERSION"; fi; }
ref_of() { echo "docker.io/sidetrace/$1:$(tag_of "$1")"; }
# Each architecture's image under its own local tag, so that both live in one engine's storage.
ref_arch() { echo "$(ref_of "$1")-$2"; }
remote_of() { echo "$REGISTRY/sidetrace/$1:$(tag_of "$1")"; }
archs_of() { if [[ $1 == jaeger ]]; then echo "$HOST_ARCH"; else echo "${ARCHES[*]}"; fi; }
bin_of() {
	case "$1" in
	operator) echo sidetrace-operator ;;
	injector) echo sidetrace-injector ;;
	proxy) echo sidetrace-proxy ;;
	init) echo sidetrace-init ;;
	demo-app) echo sidetrace-demo-app ;;
	jaeger) echo jaeger ;;
	esac
}
pkg_of() {
	case "$1" in
	operator) echo sidetrace-operator ;;
	injector) echo sidetrace-injector ;;
	proxy) echo sidetrace-proxy ;;
	init) echo sidetrace-init ;;
	demo-app) echo sidetrace-e2e ;;
	esac
}

# ---------------------------------------------------------------------------------------------
# Prerequisites a fresh Debian machine lacks.
# ---------------------------------------------------------------------------------------------
APT_UPDATED=0
apt_install() { # why, packages...
	local why=$1
	shift
	[[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 ||
		die "$why: install the Debian packages $* (as root: apt-get install $*)"
	log "installing Debian packages $* ($why)"
	if [[ $APT_UPDATED == 0 ]]; then
		apt-get update -qq >&2
		APT_UPDATED=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# For an architecture other than the host's: the Rust standard library for its target, a C
# cross compiler and libc (ring's C and assembly, and the static link itself), qemu-user to run
# the results once, and dpkg's foreign architecture so that apt can download its iptables.
ensure_cross() { # arch
	local a=$1 gnu pkgs=()
	[[ $a != "$HOST_ARCH" ]] || return 0
	gnu=$(gnu_of "$a")
	if [[ $DO_CARGO == 1 ]] && command -v rustup >/dev/null 2>&1 &&
		! rustup target list --installed | grep -qx "$(triple_of "$a")"; then
		log "installing the Rust target $(triple_of "$a") (rustup target add)"
		rustup target add "$(triple_of "$a")" >&2
	fi
	command -v "$gnu-gcc" >/dev/null 2>&1 || pkgs+=("gcc-${gnu//_/-}")
	[[ -e "/usr/$gnu/lib/libc.a" ]] || pkgs+=("libc6-dev-$a-cross")
	command -v "$(qemu_of "$a")" >/dev/null 2>&1 || pkgs+=(qemu-user-static)
	[[ ${#pkgs[@]} -eq 0 ]] || apt_install "building and checking $a binaries on $HOST_ARCH" "${pkgs[@]}"
	if ! dpkg --print-foreign-architectures | grep -qx "$a"; then
		[[ $(id -u) -eq 0 ]] || die "apt cannot download $a packages: run 'dpkg --add-architecture $a && apt-get update' as root"
		log "adding dpkg foreign architecture $a (apt downloads the init image's $a iptables)"
		dpkg --add-architecture "$a"
		apt-get update -qq >&2
		APT_UPDATED=1
	fi
}

# ---------------------------------------------------------------------------------------------
# The engine.
# ---------------------------------------------------------------------------------------------
pick_engine() {
	local want="${SIDETRACE_IMAGE_ENGINE:-}"
	if [[ -n "$want" ]]; then
		command -v "$want" >/dev/null 2>&1 || die "SIDETRACE_IMAGE_ENGINE=$want but '$want' is not installed"
		ENGINE=$want
		return
	fi
	# docker builds with BuildKit (--platform for arm64), which its client runs through the buildx
	# component; an engine whose client lacks it cannot build these images.
	if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 &&
		docker buildx version >/dev/null 2>&1; then
		ENGINE=docker
	elif command -v podman >/dev/null 2>&1; then
		ENGINE=podman
	elif command -v buildah >/dev/null 2>&1; then
		ENGINE=buildah
	else
		apt_install "no image engine found (docker with a running engine, podman or buildah)" buildah podman runc
		ENGINE=podman
	fi
	# podman is run with runc (crun refuses cgroups v1 in hybrid mode); Debian's podman does
	# not pull runc in.
	if [[ $ENGINE == podman ]] && ! command -v runc >/dev/null 2>&1; then
		if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
			apt_install "podman runs with runc here" runc
		elif command -v buildah >/dev/null 2>&1; then
			log "podman without runc: using buildah"
			ENGINE=buildah
		fi
	fi
	if command -v docker >/dev/null 2>&1 && [[ $ENGINE != docker ]]; then
		log "docker is installed but has no running engine or no buildx component (BuildKit): using $ENGINE"
	fi
}

# podman/buildah settings that work on this kind of machine (cgroups v1 in hybrid mode, no
# systemd): runc rather than crun, cgroupfs, no default ulimits, vfs storage (no overlay mount
# inside the sandbox). A caller's own CONTAINERS_CONF wins.
containers_conf() {
	mkdir -p "$OUT"
	cat >"$OUT/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
	export CONTAINERS_CONF="${CONTAINERS_CONF:-$OUT/containers.conf}"
}

engine() {
	case "$ENGINE" in
	docker) docker "$@" ;;
	podman) podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs "$@" ;;
	buildah) buildah --storage-driver vfs "$@" ;;
	esac
}

engine_build() { # name arch ctx
	local name=$1 a=$2 ctx=$3
	local args=(--platform "linux/$a" --build-arg "VERSION=$(tag_of "$name")" --build-arg "REVISION=$REVISION"
		--build-arg "SOURCE=$SOURCE" -f "$ctx/Containerfile" -t "$(ref_arch "$name" "$a")")
	[[ $name != init ]] || args+=(--build-arg "IPTABLES_VERSION=$IPTABLES_VERSION")
	case "$ENGINE" in
	# BuildKit: the classic builder honours --platform only in experimental mode.
	docker) DOCKER_BUILDKIT=1 docker build -q "${args[@]}" "$ctx" ;;
	podman) engine build --layers=false -q "${args[@]}" "$ctx" ;;
	buildah) engine bud --layers=false -q "${args[@]}" "$ctx" ;;
	esac
}

engine_id() { # ref -> image id, empty when absent
	case "$ENGINE" in
	docker | podman) engine image inspect -f '{{.Id}}' "$1" 2>/dev/null || true ;;
	buildah) engine inspect -t image -f '{{.FromImageID}}' "$1" 2>/dev/null || true ;;
	esac
}

# The image a rebuild replaced is left untagged; with vfs storage every one is a full copy, so
# remove it (only that one: other users' untagged images are none of our business).
engine_drop_old() { # old-id new-id
	[[ -n "$1" && "$1" != "$2" ]] || return 0
	engine rmi "$1" >/dev/null 2>&1 || true
}

# The archive names the image by its canonical ref (no -arch suffix): loaded into a cluster of
# that architecture, it is exactly what the chart asks for.
engine_export() { # name arch archive
	local ref src
	ref=$(ref_of "$1")
	src=$(ref_arch "$1" "$2")
	rm -f "$3"
	case "$ENGINE" in
	docker) docker tag "$src" "$ref" && docker save -o "$3" "$ref" ;;
	podman) engine tag "$src" "$ref" && engine save -q --format docker-archive -o "$3" "$ref" ;;
	buildah) engine push -q "$src" "docker-archive:$3:$ref" ;;
	esac
}

# The canonical local tag names the host's architecture (`docker run sidetrace/proxy:TAG`).
engine_tag_host() { # name
	local src
	src=$(ref_arch "$1" "$HOST_ARCH")
	[[ -n "$(engine_id "$src")" ]] || return 0
	engine tag "$src" "$(ref_of "$1")" >/dev/null
}

engine_size() { # name arch
	case "$ENGINE" in
	docker | podman) engine image inspect -f '{{.Size}}' "$(ref_arch "$1" "$2")" ;;
	buildah) du -sb "$OUT/ctx/$1-$2/rootfs" | cut -f1 ;;
	esac
}

# One manifest list per image: every architecture built, under the registry's name. The
# engine's own credentials (its login) are used; nothing here reads or stores any.
push_image() { # name
	local name=$1 remote a tls=()
	remote=$(remote_of "$name")
	[[ "${SIDETRACE_PUSH_TLS_VERIFY:-true}" != false ]] || tls=(--tls-verify=false)
	log "==> push $remote ($(archs_of "$name"))"
	case "$ENGINE" in
	podman | buildah)
		# A list left by an earlier run would keep its old entries.
		engine manifest rm "$remote" >/dev/null 2>&1 || true
		engine manifest create "$remote" >/dev/null
		for a in $(archs_of "$name"); do
			engine manifest add "$remote" "containers-storage:$(ref_arch "$name" "$a")" >/dev/null
		done
		engine manifest push --all "${tls[@]}" "$remote" "docker://$remote" >&2
		;;
	docker)
		# Without buildx, `docker manifest` lists images that are already in the registry:
		# push each architecture under <tag>-<arch>, then the list that names them.
		local parts=()
		for a in $(archs_of "$name"); do
			docker tag "$(ref_arch "$name" "$a")" "$remote-$a"
			docker push -q "$remote-$a" >&2
			parts+=("$remote-$a")
		done
		docker manifest rm "$remote" >/dev/null 2>&1 || true
		docker manifest create "$remote" "${parts[@]}" >&2
		docker manifest push "$remote" >&2
		;;
	esac
}

# ---------------------------------------------------------------------------------------------
# Binaries: built, then checked for what they are.
# ---------------------------------------------------------------------------------------------
human() { numfmt --to=iec --suffix=B "$1" 2>/dev/null || echo "${1}B"; }

# Run a program of architecture `arch` here: directly on the host's, under qemu-user otherwise.
# `prefix` is where qemu looks first for absolute paths (the dynamic loader and libraries).
run_arch() { # arch prefix program args...
	local a=$1 prefix=$2
	shift 2
	if [[ $a == "$HOST_ARCH" ]]; then "$@"; else "$(qemu_of "$a")" -L "$prefix" "$@"; fi
}

# A binary for the image: the right machine, statically linked (no NEEDED entry: `ldd` cannot
# look at a foreign binary, readelf can), and it starts. Prints how it was checked.
check_binary() { # arch file
	local a=$1 f=$2 desc flag=--version out
	case "$(basename "$f")" in
	sidetrace-demo-app) flag=--help ;;
	jaeger*) flag=version ;;
	esac
	desc=$(file -b "$f")
	[[ $desc == *"$(file_machine_of "$a")"* ]] || die "$f is not a $a binary: $desc"
	[[ $desc == *"statically linked"* || $desc == *"static-pie linked"* ]] || die "$f is not static: $desc"
	if readelf -d "$f" 2>/dev/null | grep -q NEEDED; then
		die "$f needs shared libraries:"$'\n'"$(readelf -d "$f" | grep NEEDED)"
	fi
	out=$(run_arch "$a" / "$f" "$flag" 2>&1) || die "$f $flag failed ($a): $out"
	out=${out%%$'\n'*}
	[[ -n "$out" ]] || die "$f $flag printed nothing"
	log "    checked $(basename "$f") ($a): ${desc%%, BuildID*}; $flag$([[ $a == "$HOST_ARCH" ]] || echo " under $(qemu_of "$a")"): $out"
}

build_binaries() { # arch
	local a=$1 pkgs=() bins=() n triple env=()
	for n in "${WANT[@]}"; do
		[[ $n != jaeger ]] || continue
		pkgs+=(-p "$(pkg_of "$n")")
		bins+=(--bin "$(bin_of "$n")")
	done
	[[ ${#bins[@]} -gt 0 ]] || return 0
	triple=$(triple_of "$a")
	if [[ $a != "$HOST_ARCH" ]]; then
		local up=${triple^^}
		up=${up//-/_}
		env=("CARGO_TARGET_${up}_LINKER=$(gnu_of "$a")-gcc" "CC_${triple//-/_}=$(gnu_of "$a")-gcc"
			"AR_${triple//-/_}=$(gnu_of "$a")-ar")
	fi
	local t0=$SECONDS
	log "==> cargo build --release --target $triple (static glibc) ${bins[*]}"
	(
		cd "$ROOT"
		env "${env[@]}" RUSTFLAGS="-C target-feature=+crt-static" nice -n "${CARGO_NICE:-10}" \
			"$CARGO" build --release --target "$triple" "${pkgs[@]}" "${bins[@]}"
	) || die "cargo build for $a failed"
	log "<== $a release binaries in $((SECONDS - t0))s ($(release_dir "$a"))"
}

# ---------------------------------------------------------------------------------------------
# Root filesystems.
# ---------------------------------------------------------------------------------------------
# The files every image carries: users and groups (nonroot 65532, sidetrace-proxy 1337),
# nsswitch.conf, CA certificates (kube clients pointed at an apiserver with a public
# certificate; in-cluster they use the service account's CA), a world-writable /tmp.
base_rootfs() {
	local r=$1
	rm -rf "$r"
	mkdir -p "$r/etc/ssl/certs" "$r/usr/local/bin" "$r/home/nonroot" "$r/tmp" "$r/run"
	chmod 1777 "$r/tmp"
	cp "$ROOT/images/rootfs/etc/passwd" "$ROOT/images/rootfs/etc/group" "$ROOT/images/rootfs/etc/hosts" \
		"$ROOT/images/rootfs/etc/nsswitch.conf" "$r/etc/"
	if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
		cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/"
	fi
}

# iptables for the init image comes from Debian's own packages for the image's architecture,
# not from the build host: an arm64 image cannot use the host's x86-64 iptables, and the host
# need not have iptables at all. These are iptables 1.8.9's package and its Depends (netbase
# only for /etc/protocols); libc6 brings the dynamic loader and libc/libm. The closure of what
# the programs and extensions need is taken from readelf below, and a library missing from
# these packages fails the build rather than the pod.
IPTABLES_DEBS=(iptables libxtables12 libip4tc2 libip6tc2 libnftnl11 libmnl0 libnetfilter-conntrack3
	libnfnetlink0 libc6 netbase)
IPTABLES_VERSION=""

# $OUT/debs/<arch>/root: the packages unpacked (dpkg-deb -x: nothing is installed).
fetch_iptables() { # arch -> sets DEB_ROOT
	local a=$1 dir="$OUT/debs/$1" p specs=()
	command -v apt-get >/dev/null 2>&1 || die "the init image takes iptables from Debian packages: needs apt-get"
	ensure_cross "$a"
	mkdir -p "$dir"
	for p in "${IPTABLES_DEBS[@]}"; do
		if [[ $p == netbase ]]; then specs+=("$p"); else specs+=("$p:$a"); fi
	done
	# apt-get download fetches the candidate versions (the same suite as the host's iptables)
	# and skips a file already there; the names it would fetch (asked from an empty directory)
	# are the ones unpacked, and older versions are removed.
	local names=() empty
	empty=$(mktemp -d)
	mapfile -t names < <(cd "$empty" && apt-get download --print-uris "${specs[@]}" 2>/dev/null | awk '{print $2}')
	rmdir "$empty"
	[[ ${#names[@]} -eq ${#specs[@]} ]] || {
		apt-get update -qq >&2
		empty=$(mktemp -d)
		mapfile -t names < <(cd "$empty" && apt-get download --print-uris "${specs[@]}" | awk '{print $2}')
		rmdir "$empty"
	}
	[[ ${#names[@]} -eq ${#specs[@]} ]] || die "apt cannot find ${specs[*]}"
	log "    apt-get download ${names[*]}"
	# (apt warns that its sandbox user cannot write the root-owned cache; harmless here.)
	(cd "$dir" && apt-get download -q=2 "${specs[@]}" 2>&1 | { grep -v '^W: Download is performed unsandboxed' || true; } >&2) ||
		die "apt-get download ${specs[*]} failed"
	for p in "$dir"/*.deb; do
		[[ " ${names[*]} " == *" $(basename "$p") "* ]] || rm -f "$p"
	done
	DEB_ROOT="$dir/root"
	rm -rf "$DEB_ROOT"
	mkdir -p "$DEB_ROOT"
	for p in "${names[@]}"; do dpkg-deb -x "$dir/$p" "$DEB_ROOT"; done
	IPTABLES_VERSION=$(dpkg-deb -f "$dir/$(printf '%s\n' "${names[@]}" | grep '^iptables_')" Version)
	IPTABLES_VERSION=${IPTABLES_VERSION%%-*}
}

# Follow symlinks inside the unpacked tree (an absolute target means that tree's /, never the
# host's, which holds another architecture's files).
resolve_in() { # root path -> path inside root
	local r=$1 p=$2 t i
	for i in 1 2 3 4 5 6 7 8 9 10; do
		[[ -L "$r$p" ]] || break
		t=$(readlink "$r$p")
		if [[ $t == /* ]]; then p=$t; else p="$(dirname "$p")/$t"; fi
		p=$(realpath -m -s "$p")
	done
	[[ -e "$r$p" ]] || return 1
	echo "$p"
}

# The image is merged-/usr (lib -> usr/lib), Debian 12's packages are not: /lib/x is /usr/lib/x.
usr_path() { case "$1" in /usr/*) echo "$1" ;; *) echo "/usr$1" ;; esac; }

# A library's path in the unpacked packages, by its NEEDED name.
find_lib() { # root arch name
	local r=$1 gnu d
	gnu=$(gnu_of "$2")
	for d in "/lib/$gnu" "/usr/lib/$gnu" /lib /usr/lib /lib64 /usr/lib64; do
		[[ -e "$r$d/$3" ]] && {
			echo "$d/$3"
			return
		}
	done
	return 1
}

# Copy an ELF file from the unpacked packages into the image at its merged-/usr path, and
# (recursively) every library its NEEDED entries name, at their sonames.
copy_elf() { # deb-root image-root arch path
	local dr=$1 r=$2 a=$3 p=$4 real lib dest
	dest=$(usr_path "$p")
	[[ ! -e "$r$dest" ]] || return 0
	real=$(resolve_in "$dr" "$p") || die "$p is not in the $a packages"
	install -D -m 0755 "$dr$real" "$r$dest"
	while read -r lib; do
		local lp
		lp=$(find_lib "$dr" "$a" "$lib") || die "$p needs $lib, which none of ${IPTABLES_DEBS[*]} ($a) ships"
		copy_elf "$dr" "$r" "$a" "$lp"
	done < <(readelf -d "$dr$real" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
}

init_rootfs() { # rootfs arch
	local r=$1 a=$2 x name lib interp xt
	fetch_iptables "$a"
	local dr=$DEB_ROOT
	# Merged /usr, as the dynamic loader's search paths expect either way.
	mkdir -p "$r/usr/bin" "$r/usr/sbin" "$r/usr/lib" "$r/usr/lib64"
	ln -s usr/bin "$r/bin"
	ln -s usr/sbin "$r/sbin"
	ln -s usr/lib "$r/lib"
	ln -s usr/lib64 "$r/lib64"
	for x in xtables-nft-multi xtables-legacy-multi; do
		copy_elf "$dr" "$r" "$a" "/usr/sbin/$x"
		interp=$(readelf -l "$dr/usr/sbin/$x" | sed -n 's/.*interpreter: \(.*\)\]/\1/p')
		copy_elf "$dr" "$r" "$a" "$interp"
	done
	for x in iptables ip6tables; do
		for name in "$x" "$x-restore" "$x-save" "$x-nft" "$x-nft-restore" "$x-nft-save"; do
			ln -s xtables-nft-multi "$r/usr/sbin/$name"
		done
		for name in "$x-legacy" "$x-legacy-restore" "$x-legacy-save"; do
			ln -s xtables-legacy-multi "$r/usr/sbin/$name"
		done
	done
	# Matches and targets are dlopen()ed from here (iptables' compiled-in XTABLES_LIBDIR);
	# their own libraries too.
	xt="/usr/lib/$(gnu_of "$a")/xtables"
	[[ -d "$dr$xt" ]] || die "no $xt in the $a iptables package"
	for lib in "$dr$xt"/*.so; do copy_elf "$dr" "$r" "$a" "${lib#"$dr"}"; done
	# `-p tcp` and friends are looked up by name; the file is tiny.
	[[ ! -f "$dr/etc/protocols" ]] || cp "$dr/etc/protocols" "$r/etc/"
	# The image's iptables runs with the image's loader and libraries (chroot for the host's
	# architecture, qemu-user with the image as its root for another) and loads an extension.
	local v
	if [[ $a == "$HOST_ARCH" && $(id -u) -ne 0 ]]; then
		v="not run (chroot needs root)"
	elif [[ $a == "$HOST_ARCH" ]]; then
		v=$(chroot "$r" /usr/sbin/xtables-legacy-multi iptables --version 2>&1) &&
			chroot "$r" /usr/sbin/xtables-legacy-multi iptables -p tcp -m owner -h >/dev/null 2>&1
	else
		v=$(run_arch "$a" "$r" "$r/usr/sbin/xtables-legacy-multi" iptables --version 2>&1) &&
			run_arch "$a" "$r" "$r/usr/sbin/xtables-legacy-multi" iptables -p tcp -m owner -h >/dev/null 2>&1
	fi || die "the $a init image's iptables does not start or load its extensions: $v"
	log "    init ($a): iptables $IPTABLES_VERSION from Debian's $a packages, $(find "$r$xt" -name '*.so' | wc -l) extensions; --version: $v"
}

assemble() { # name arch
	local name=$1 a=$2 ctx="$OUT/ctx/$1-$2" bin
	bin=$(bin_of "$name")
	base_rootfs "$ctx/rootfs"
	cp "$ROOT/images/Containerfile.$name" "$ctx/Containerfile"
	if [[ $name == jaeger ]]; then
		check_binary "$a" "$(readlink -f "$JAEGER_BIN")"
		install -m 0755 "$(readlink -f "$JAEGER_BIN")" "$ctx/rootfs/usr/local/bin/jaeger"
		return
	fi
	local f
	f="$(release_dir "$a")/$bin"
	[[ -x "$f" ]] || die "$f missing (run without --no-cargo)"
	check_binary "$a" "$f"
	install -m 0755 "$f" "$ctx/rootfs/usr/local/bin/$bin"
	[[ $name != init ]] || init_rootfs "$ctx/rootfs" "$a"
}

# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------
main() {
	mkdir -p "$OUT"
	exec {lockfd}>"$OUT/.lock"
	if ! flock -n "$lockfd"; then
		log "another images/build.sh is running; waiting for it"
		flock "$lockfd"
	fi

	pick_engine
	[[ $ENGINE == docker ]] || containers_conf
	log "engine: $ENGINE; images: ${WANT[*]}; architectures: ${ARCHES[*]} (host $HOST_ARCH);" \
		"tag $APP_VERSION; revision $REVISION; output $OUT"
	local a missing=()
	# `file` and `readelf` check what each binary is; a minimal Debian lacks `file`.
	command -v file >/dev/null 2>&1 || missing+=(file)
	command -v readelf >/dev/null 2>&1 || missing+=(binutils)
	[[ $DO_BUILD == 0 || ${#missing[@]} -eq 0 ]] || apt_install "checking the binaries" "${missing[@]}"
	[[ $DO_BUILD == 0 ]] || for a in "${ARCHES[@]}"; do ensure_cross "$a"; done

	local timings=()
	[[ $DO_BUILD == 1 ]] || DO_CARGO=0
	if [[ $DO_CARGO == 1 ]]; then
		local t0
		for a in "${ARCHES[@]}"; do
			t0=$SECONDS
			build_binaries "$a"
			timings+=("cargo $a $((SECONDS - t0))s")
		done
	fi

	local n t0 ref archive size asize old_id summary=() tmp
	declare -A tsv=()
	for a in $([[ $DO_BUILD == 0 ]] || echo "${ARCHES[@]}"); do
		tsv[$a]=$(mktemp "$OUT/images.$a.tsv.XXXX")
		# Keep the lines of images not rebuilt this time.
		if [[ -f "$OUT/images.$a.tsv" ]]; then
			grep -v -E "^($(
				IFS='|'
				echo "${WANT[*]}"
			))	" "$OUT/images.$a.tsv" >"${tsv[$a]}" || true
		fi
	done
	for n in $([[ $DO_BUILD == 0 ]] || echo "${WANT[@]}"); do
		for a in $(archs_of "$n"); do
			t0=$SECONDS
			ref=$(ref_of "$n")
			log "==> $ref ($a)"
			assemble "$n" "$a"
			old_id=$(engine_id "$(ref_arch "$n" "$a")")
			engine_build "$n" "$a" "$OUT/ctx/$n-$a" >/dev/null || die "building $ref for $a with $ENGINE failed"
			engine_drop_old "$old_id" "$(engine_id "$(ref_arch "$n" "$a")")"
			size=$(engine_size "$n" "$a")
			archive=""
			asize="-"
			if [[ $DO_EXPORT == 1 ]]; then
				archive="$OUT/$n-$(tag_of "$n")-$a.tar"
				engine_export "$n" "$a" "$archive" || die "exporting $ref ($a) failed"
				asize=$(human "$(stat -c %s "$archive")")
				[[ -n "${tsv[$a]:-}" ]] || tsv[$a]=$(mktemp "$OUT/images.$a.tsv.XXXX")
				printf '%s\t%s\t%s\n' "$n" "$ref" "$archive" >>"${tsv[$a]}"
			fi
			log "<== $ref ($a) built in $((SECONDS - t0))s: image $(human "$size"), archive $asize"
			summary+=("$(printf '  %-42s %-5s %8s  %s' "$ref" "$a" "$(human "$size")" "${archive:-not exported}")")
		done
		engine_tag_host "$n"
	done
	for a in "${!tsv[@]}"; do
		sort "${tsv[$a]}" >"$OUT/images.$a.tsv"
		rm -f "${tsv[$a]}"
	done
	# images.tsv: the host architecture's archives, what a local cluster (the one-node cluster,
	# kind on this machine) loads.
	[[ $DO_BUILD == 0 || ! -f "$OUT/images.$HOST_ARCH.tsv" ]] || cp "$OUT/images.$HOST_ARCH.tsv" "$OUT/images.tsv"

	if [[ $PUSH == 1 ]]; then
		for n in "${WANT[@]}"; do
			if [[ $n == jaeger ]]; then
				log "not pushing jaeger: the chart's default is the Jaeger project's own image"
				continue
			fi
			for a in $(archs_of "$n"); do
				[[ -n "$(engine_id "$(ref_arch "$n" "$a")")" ]] ||
					die "$(ref_arch "$n" "$a") is not in $ENGINE's storage: build it first (make images)"
			done
			push_image "$n"
		done
		log "pushed to $REGISTRY: helm install sidetrace ./helm/sidetrace -n sidetrace-system --create-namespace --set images.registry=$REGISTRY"
	elif [[ -n "$REGISTRY" ]]; then
		log "--registry $REGISTRY without --push (PUSH=1): nothing pushed"
	fi
	if [[ -n "$KIND_CLUSTER" ]]; then
		command -v kind >/dev/null 2>&1 || die "--kind-load $KIND_CLUSTER: kind is not installed"
		while IFS=$'\t' read -r n ref archive; do
			log "==> kind load image-archive $archive --name $KIND_CLUSTER ($ref)"
			kind load image-archive "$archive" --name "$KIND_CLUSTER" >&2
		done <"$OUT/images.tsv"
	fi

	log "done in $((SECONDS - T_START))s with $ENGINE${timings[*]:+ (${timings[*]})}${summary[*]:+:}"
	[[ ${#summary[@]} -eq 0 ]] || printf '%s\n' "${summary[@]}" >&2
	[[ $DO_EXPORT == 0 || $DO_BUILD == 0 ]] || log "archives listed in $OUT/images.<arch>.tsv (load: kind load image-archive FILE; ctr -n k8s.io images import FILE)"
}

main
