#!/usr/bin/env bash
# Benchmark (not a test): push -> every agent converged, for NODES simulated
# agents, the reconciler and one in-memory store in one process
# (reconciler/examples/bench-converge.rs: its documentation says what is
# measured and how).
#
#   bash bench/converge.sh                         # 1,000 agents at 1 s poll, 5 pushes
#   NODES=100000 POLL=30s MARGIN=5s PUSHES=1 bash bench/converge.sh
#   NODES=100000 POLL=30s IDLE=1 MARGIN=5s PUSHES=1 bash bench/converge.sh
#
# The fleet is generated (tests/src/bin/gen-fleet.rs), then made to converge
# in one step: three independent environments (no approvals or windows),
# every rollout `step percent=100` with max-unavailable NODES. Once the first
# rollout has converged, each push changes every config; the example prints
# one table row per push and PASS when the slowest node converged within
# the limit (publish + one poll interval, jitter included) plus MARGIN.
#
# Environment: NODES (1000), CONFIGS (10), POLL (1s), JITTER (POLL/10),
# PUSHES (5), MARGIN (1s), STORE_LATENCY (0ms; 20ms stands in for S3),
# APPLY_LATENCY (50ms), HEARTBEAT (1m), IDLE=1 (report-to: idle agents poll
# every IDLE_POLL, 5m, and send heartbeats over HTTP), PROFILE (release),
# KEEP=1 keeps the directory.
set -euo pipefail

cd "$(dirname "$0")/.."
NODES=${NODES:-1000}
CONFIGS=${CONFIGS:-10}
POLL=${POLL:-1s}
PUSHES=${PUSHES:-5}
MARGIN=${MARGIN:-1s}
. bench/lib.sh
# One cargo run for both: built apart, they would unify features
# differently and rebuild each other's dependencies.
echo "== build ($PROFILE)"
cargo build --profile "$PROFILE" -p gitfleet-tests --bin gen-fleet \
    -p gitfleet-reconciler --example bench-converge
dir=$PROFILE
[ "$PROFILE" = dev ] && dir=debug
GEN=$(realpath "$TARGET/$dir/gen-fleet")
BENCH=$(realpath "$TARGET/$dir/examples/bench-converge")
bench_workdir

echo "== generate $NODES nodes, $CONFIGS configs"
"$GEN" --nodes "$NODES" --configs "$CONFIGS" --out "$work/repo" >/dev/null
cat > "$work/repo/environments.kdl" <<'KDL'
// Three independent environments: nothing waits for another.
version 1
environment "dev"
environment "staging"
environment "prod"
KDL
rm -f "$work/repo/rollouts/backbone.kdl" "$work/repo/meshes/backbone.kdl"
for f in "$work/repo"/rollouts/*.kdl; do
    name=$(basename "$f" .kdl)
    cat > "$f" <<KDL
version 1
config "$name"
selector svc="$name"
step percent=100
max-unavailable $NODES
bake "1s"
progress-deadline "30m"
gates {
    healthy
}
KDL
done

echo "== bench-converge ($NODES agents, poll $POLL)"
flags=(--repo "$work/repo" --dir "$work/demo" --poll "$POLL" --pushes "$PUSHES" --margin "$MARGIN")
[ -n "${JITTER:-}" ] && flags+=(--jitter "$JITTER")
[ -n "${STORE_LATENCY:-}" ] && flags+=(--store-latency "$STORE_LATENCY")
[ -n "${APPLY_LATENCY:-}" ] && flags+=(--apply-latency "$APPLY_LATENCY")
[ -n "${HEARTBEAT:-}" ] && flags+=(--heartbeat "$HEARTBEAT")
[ "${IDLE:-}" = 1 ] && flags+=(--idle)
[ -n "${IDLE_POLL:-}" ] && flags+=(--idle-poll "$IDLE_POLL")
"$BENCH" "${flags[@]}"
