# Shared by the bench/*.sh scripts (sourced, from the workspace root).
#
# bench_build [gen-fleet]: build the gitfleet binary (and gen-fleet) for
#   PROFILE (release; dev for a quick try) and set GITFLEET (and GEN).
# bench_workdir: make a scratch directory $work, removed at exit unless
#   KEEP=1; a process whose pid is in $pid is stopped (SIGTERM: a background job of a script ignores SIGINT) first.

TARGET=${CARGO_TARGET_DIR:-target}
PROFILE=${PROFILE:-release}

bench_build() {
    echo "== build ($PROFILE)"
    cargo build --profile "$PROFILE" -p gitfleet-reconciler --bin gitfleet
    local dir=$PROFILE
    [ "$PROFILE" = dev ] && dir=debug
    GITFLEET=$(realpath "$TARGET/$dir/gitfleet")
    if [ "${1:-}" = gen-fleet ]; then
        cargo build --profile "$PROFILE" -p gitfleet-tests --bin gen-fleet
        GEN=$(realpath "$TARGET/$dir/gen-fleet")
    fi
}

bench_cleanup() {
    if [ -n "${pid:-}" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    if [ "${KEEP:-}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}

bench_workdir() {
    work=$(mktemp -d)
    pid=
    trap bench_cleanup EXIT
}
