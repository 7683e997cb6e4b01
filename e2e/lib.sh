# e2e/lib.sh — logging shared by the e2e scripts (sourced, not run).
#
# Each line names the script ($LOG_TAG) and the seconds since $T_START (default: when this file
# is sourced), on stderr so that a script's stdout stays its output.

T_START=${T_START:-$SECONDS}
log() { printf '[%s %5ss] %s\n' "${LOG_TAG:-e2e}" "$((SECONDS - T_START))" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# timed NAME CMD... — run a set-up step, printing its start and how long it took.
timed() {
	local name=$1 t0=$SECONDS
	shift
	log "==> $name"
	"$@"
	log "<== $name ($((SECONDS - t0))s)"
}
