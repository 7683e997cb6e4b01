#!/usr/bin/env bash
# images/build.sh — build sidetrace's container images (`make images`).
#
#   images/build.sh [--no-cargo] [--no-export] [NAME...]
#
#   NAME: operator injector proxy init demo-app jaeger (default: all of them; jaeger only when
#   `e2e/peers.sh jaeger` has built ~/.cache/sidetrace/bin/jaeger, else it is skipped loudly).
#   --no-cargo   use the release binaries already built (fails when one is missing)
#   --no-export  do not write the archives
#
# What it does, printing each step and its timing:
#   1. builds the release binaries statically linked against glibc (RUSTFLAGS
#      -C target-feature=+crt-static with an explicit --target, so build scripts and proc-macros
#      stay dynamic), under `nice` because the machine is shared;
#   2. assembles one build context per image under $CACHE/images/ctx/<name>/rootfs and builds
#      images/Containerfile.<name> with the first engine that works: docker (engine running),
#      podman, buildah (both with --storage-driver vfs; podman with runc and cgroupfs);
#      everything is FROM scratch since no image can be pulled;
#   3. tags docker.io/sidetrace/<name>:<tag> (what the chart's `sidetrace/<name>:<tag>` means to
#      containerd and the kubelet) and exports each image as a docker archive
#      $CACHE/images/<name>-<tag>.tar, which `kind load image-archive`, `ctr images import` and
#      `podman load` all read, and lists them in $CACHE/images/images.tsv (name, ref, archive).
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
# iptables is a dynamic C program (see Containerfile.init).
#
# Env: SIDETRACE_CACHE (default ~/.cache/sidetrace), SIDETRACE_IMAGE_ENGINE=docker|podman|buildah
# (default: the first that works), CARGO (default cargo), CARGO_NICE (default 10).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${SIDETRACE_CACHE:-$HOME/.cache/sidetrace}"
OUT="$CACHE/images"
CARGO="${CARGO:-cargo}"
TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RELEASE="$TARGET_DIR/$TRIPLE/release"
ALL=(operator injector proxy init demo-app jaeger)

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
# Which images, which options.
# ---------------------------------------------------------------------------------------------
DO_CARGO=1
DO_EXPORT=1
WANT=()
for arg in "$@"; do
	case "$arg" in
	--no-cargo) DO_CARGO=0 ;;
	--no-export) DO_EXPORT=0 ;;
	-h | --help)
		sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
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

# Jaeger: the binary `e2e/peers.sh jaeger` builds (bin/jaeger -> jaeger-v1.75.0); the tag is
# its version, which the chart's values.yaml (images.jaeger.tag) must name.
JAEGER_BIN="$CACHE/bin/jaeger"
JAEGER_TAG=""
if [[ " ${WANT[*]} " == *" jaeger "* ]]; then
	if [[ -x "$JAEGER_BIN" ]]; then
		JAEGER_TAG=$(basename "$(readlink -f "$JAEGER_BIN")")
		JAEGER_TAG=${JAEGER_TAG#jaeger-}
		JAEGER_TAG=${JAEGER_TAG#v}
		chart_tag=$(sed -n '/^  jaeger:/,/^  [a-z]/s/^    tag:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' "$ROOT/helm/sidetrace/values.yaml")
		if [[ -n "$chart_tag" && "$chart_tag" != "$JAEGER_TAG" ]]; then
			log "WARNING: jaeger binary is $JAEGER_TAG but the chart's images.jaeger.tag is $chart_tag"
		fi
	else
		log "SKIP jaeger image: $JAEGER_BIN not found (build it with 'e2e/peers.sh jaeger'," \
			"a long Go build); the chart's in-cluster Jaeger needs it"
		keep=()
		for n in "${WANT[@]}"; do [[ $n == jaeger ]] || keep+=("$n"); done
		WANT=("${keep[@]}")
	fi
fi

tag_of() { if [[ $1 == jaeger ]]; then echo "$JAEGER_TAG"; else echo "$APP_VERSION"; fi; }
ref_of() { echo "docker.io/sidetrace/$1:$(tag_of "$1")"; }
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
# The engine.
# ---------------------------------------------------------------------------------------------
install_engine() {
	if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
		return 1
	fi
	log "no image engine found: installing buildah, podman and runc from Debian's packages"
	apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman runc >&2
}

pick_engine() {
	local want="${SIDETRACE_IMAGE_ENGINE:-}"
	if [[ -n "$want" ]]; then
		command -v "$want" >/dev/null 2>&1 || die "SIDETRACE_IMAGE_ENGINE=$want but '$want' is not installed"
		ENGINE=$want
		return
	fi
	if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
		ENGINE=docker
	elif command -v podman >/dev/null 2>&1; then
		ENGINE=podman
	elif command -v buildah >/dev/null 2>&1; then
		ENGINE=buildah
	elif install_engine; then
		ENGINE=podman
	else
		die "no image engine: need docker (with a running engine), podman or buildah" \
			"(apt-get install buildah podman runc, as root)"
	fi
	# podman is run with runc (crun refuses cgroups v1 in hybrid mode); Debian's podman does
	# not pull runc in.
	if [[ $ENGINE == podman ]] && ! command -v runc >/dev/null 2>&1; then
		if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
			log "installing runc for podman"
			apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >&2
		elif command -v buildah >/dev/null 2>&1; then
			log "podman without runc: using buildah"
			ENGINE=buildah
		fi
	fi
	if command -v docker >/dev/null 2>&1 && [[ $ENGINE != docker ]]; then
		log "docker is installed but 'docker info' fails (no running engine): using $ENGINE"
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

engine_build() { # name ctx
	local name=$1 ctx=$2
	local args=(--build-arg "VERSION=$(tag_of "$name")" --build-arg "REVISION=$REVISION"
		--build-arg "SOURCE=$SOURCE" -f "$ctx/Containerfile" -t "$(ref_of "$name")")
	[[ $name != init ]] || args+=(--build-arg "IPTABLES_VERSION=$IPTABLES_VERSION")
	case "$ENGINE" in
	docker) docker build -q "${args[@]}" "$ctx" ;;
	podman) engine build --layers=false -q "${args[@]}" "$ctx" ;;
	buildah) engine bud --layers=false -q "${args[@]}" "$ctx" ;;
	esac
}

engine_id() { # name -> image id, empty when absent
	local ref
	ref=$(ref_of "$1")
	case "$ENGINE" in
	docker | podman) engine image inspect -f '{{.Id}}' "$ref" 2>/dev/null || true ;;
	buildah) engine inspect -t image -f '{{.FromImageID}}' "$ref" 2>/dev/null || true ;;
	esac
}

# The image a rebuild replaced is left untagged; with vfs storage every one is a full copy, so
# remove it (only that one: other users' untagged images are none of our business).
engine_drop_old() { # old-id new-id
	[[ -n "$1" && "$1" != "$2" ]] || return 0
	engine rmi "$1" >/dev/null 2>&1 || true
}

engine_export() { # name archive
	local ref
	ref=$(ref_of "$1")
	rm -f "$2"
	case "$ENGINE" in
	docker) docker save -o "$2" "$ref" ;;
	podman) engine save -q --format docker-archive -o "$2" "$ref" ;;
	buildah) engine push -q "$ref" "docker-archive:$2:$ref" ;;
	esac
}

engine_size() { # name -> bytes
	local ref
	ref=$(ref_of "$1")
	case "$ENGINE" in
	docker | podman) engine image inspect -f '{{.Size}}' "$ref" ;;
	buildah) du -sb "$OUT/ctx/$1/rootfs" | cut -f1 ;;
	esac
}

# ---------------------------------------------------------------------------------------------
# Root filesystems.
# ---------------------------------------------------------------------------------------------
human() { numfmt --to=iec --suffix=B "$1" 2>/dev/null || echo "${1}B"; }

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

# A statically linked binary: ldd must not list a shared library.
check_static() {
	local out
	out=$(ldd "$1" 2>&1 || true)
	if grep -q '=>' <<<"$out"; then
		die "$1 is dynamically linked:"$'\n'"$out"
	fi
}

# Copy an ELF file and every shared library ldd lists for it (plus the dynamic loader) into
# the root at the same paths.
copy_with_libs() {
	local r=$1 f=$2 lib
	install -D -m 0755 "$f" "$r$f"
	while read -r lib; do
		[[ -e "$r$lib" ]] || install -D -m 0755 "$(readlink -f "$lib")" "$r$lib"
	done < <(ldd "$f" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p')
}

IPTABLES_VERSION=""
ensure_iptables() {
	if [[ -x /usr/sbin/xtables-nft-multi && -x /usr/sbin/xtables-legacy-multi ]]; then return; fi
	[[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 ||
		die "the init image copies iptables from this host: install Debian's iptables package"
	log "installing iptables (the init image copies its binaries from this host)"
	apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >&2
}

init_rootfs() {
	local r=$1 x name lib
	ensure_iptables
	IPTABLES_VERSION=$(/usr/sbin/xtables-nft-multi iptables --version | sed -n 's/^iptables v\([^ ]*\).*/\1/p')
	# Merged /usr, as Debian: ldd prints /lib/... and /lib64/... paths.
	mkdir -p "$r/usr/bin" "$r/usr/sbin" "$r/usr/lib" "$r/usr/lib64"
	ln -s usr/bin "$r/bin"
	ln -s usr/sbin "$r/sbin"
	ln -s usr/lib "$r/lib"
	ln -s usr/lib64 "$r/lib64"
	for x in xtables-nft-multi xtables-legacy-multi; do copy_with_libs "$r" "/usr/sbin/$x"; done
	for x in iptables ip6tables; do
		for name in "$x" "$x-restore" "$x-save"; do
			ln -s xtables-nft-multi "$r/usr/sbin/$name"
		done
		for name in "$x-nft" "$x-nft-restore" "$x-nft-save"; do
			ln -s xtables-nft-multi "$r/usr/sbin/$name"
		done
		for name in "$x-legacy" "$x-legacy-restore" "$x-legacy-save"; do
			ln -s xtables-legacy-multi "$r/usr/sbin/$name"
		done
	done
	# Matches and targets are dlopen()ed from here; their own libraries too.
	local xt=/usr/lib/x86_64-linux-gnu/xtables
	mkdir -p "$r$xt"
	cp -a "$xt"/*.so "$r$xt/"
	for lib in "$xt"/*.so; do copy_with_libs "$r" "$lib"; done
	# `-p tcp` and friends are looked up by name; the file is tiny.
	[[ ! -f /etc/protocols ]] || cp /etc/protocols "$r/etc/"
}

assemble() { # name
	local name=$1 ctx="$OUT/ctx/$1" bin
	bin=$(bin_of "$name")
	base_rootfs "$ctx/rootfs"
	cp "$ROOT/images/Containerfile.$name" "$ctx/Containerfile"
	if [[ $name == jaeger ]]; then
		check_static "$JAEGER_BIN"
		install -m 0755 "$(readlink -f "$JAEGER_BIN")" "$ctx/rootfs/usr/local/bin/jaeger"
		return
	fi
	[[ -x "$RELEASE/$bin" ]] || die "$RELEASE/$bin missing (run without --no-cargo)"
	check_static "$RELEASE/$bin"
	install -m 0755 "$RELEASE/$bin" "$ctx/rootfs/usr/local/bin/$bin"
	[[ $name != init ]] || init_rootfs "$ctx/rootfs"
}

# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------
build_binaries() {
	local pkgs=() bins=() n
	for n in "${WANT[@]}"; do
		[[ $n != jaeger ]] || continue
		pkgs+=(-p "$(pkg_of "$n")")
		bins+=(--bin "$(bin_of "$n")")
	done
	[[ ${#bins[@]} -gt 0 ]] || return 0
	local t0=$SECONDS
	log "==> cargo build --release --target $TRIPLE (static glibc) ${bins[*]}"
	(
		cd "$ROOT"
		RUSTFLAGS="-C target-feature=+crt-static" nice -n "${CARGO_NICE:-10}" \
			"$CARGO" build --release --target "$TRIPLE" "${pkgs[@]}" "${bins[@]}"
	) || die "cargo build failed"
	log "<== release binaries in $((SECONDS - t0))s ($RELEASE)"
}

main() {
	mkdir -p "$OUT"
	exec {lockfd}>"$OUT/.lock"
	if ! flock -n "$lockfd"; then
		log "another images/build.sh is running; waiting for it"
		flock "$lockfd"
	fi

	pick_engine
	[[ $ENGINE == docker ]] || containers_conf
	log "engine: $ENGINE; images: ${WANT[*]}; tag $APP_VERSION; revision $REVISION; output $OUT"

	[[ $DO_CARGO == 0 ]] || build_binaries

	local n t0 ref archive size asize old_id summary=() manifest="$OUT/images.tsv" tmp
	tmp=$(mktemp "$OUT/images.tsv.XXXX")
	# Keep the lines of images not rebuilt this time.
	if [[ -f "$manifest" ]]; then
		grep -v -E "^($(
			IFS='|'
			echo "${WANT[*]}"
		))	" "$manifest" >"$tmp" || true
	fi
	for n in "${WANT[@]}"; do
		t0=$SECONDS
		ref=$(ref_of "$n")
		log "==> $ref"
		assemble "$n"
		old_id=$(engine_id "$n")
		engine_build "$n" "$OUT/ctx/$n" >/dev/null || die "building $ref with $ENGINE failed"
		engine_drop_old "$old_id" "$(engine_id "$n")"
		size=$(engine_size "$n")
		archive=""
		asize="-"
		if [[ $DO_EXPORT == 1 ]]; then
			archive="$OUT/$n-$(tag_of "$n").tar"
			engine_export "$n" "$archive" || die "exporting $ref failed"
			asize=$(human "$(stat -c %s "$archive")")
			printf '%s\t%s\t%s\n' "$n" "$ref" "$archive" >>"$tmp"
		fi
		log "<== $ref built in $((SECONDS - t0))s: image $(human "$size"), archive $asize"
		summary+=("$(printf '  %-42s %8s  %s' "$ref" "$(human "$size")" "${archive:-not exported}")")
	done
	sort "$tmp" >"$manifest"
	rm -f "$tmp"
	log "done in $((SECONDS - T_START))s with $ENGINE:"
	printf '%s\n' "${summary[@]}" >&2
	[[ $DO_EXPORT == 0 ]] || log "archives listed in $manifest (load: kind load image-archive FILE; ctr -n k8s.io images import FILE)"
}

main
