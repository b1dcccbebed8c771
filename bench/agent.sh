#!/usr/bin/env bash
# Benchmark (not a test): the node agent.
#
#   bash bench/agent.sh
#
# Goals (issue 5, "Done when"):
#   idle RSS of `gitfleet-agent run`:                <= 10 MiB;
#   requests and bytes per no-change poll:           1 request, a few hundred bytes;
#   activating a 1 MiB bundle, excluding the reload: <= 50 ms.
#
# Builds the agent (AGENT_PROFILE) and bench-agent (tests/src/bin/bench-agent.rs),
# which measures everything and its baselines in the same run and prints
# figures, goals, PASS/FAIL and ratios. Results are printed, never asserted:
# the script exits 0 whatever the figures, and non-zero only when something
# fails to work.
#
# The poll part needs moto_server (a local S3 API): on PATH or at
# $GITFLEET_MOTO_SERVER. Install it with
#     python3 -m venv .venv && .venv/bin/pip install 'moto[server]'
# (.ci/run keeps one in $HOME/.cache/gitfleet/venv, used when found).
#
# Environment: RUNS (activations per bundle, 15), POLLS (idle polls, 10;
# the S3 part counts twice as many), ONLY=rss|poll|activate,
# AGENT_PROFILE (the cargo profile of the gitfleet-agent measured: `dist`,
# the one to ship to nodes, by default; `release` builds minutes faster).
# bench-agent itself is always built `release`.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-15}
POLLS=${POLLS:-10}
ONLY=${ONLY:-}
AGENT_PROFILE=${AGENT_PROFILE:-dist}
TARGET=${CARGO_TARGET_DIR:-target}
case $ONLY in
    "" | rss | poll | activate) ;;
    *) echo "FAIL: ONLY must be rss, poll or activate, not \`$ONLY'" >&2; exit 1 ;;
esac

if [[ -z ${GITFLEET_MOTO_SERVER:-} ]] && ! command -v moto_server > /dev/null \
    && [[ -x $HOME/.cache/gitfleet/venv/bin/moto_server ]]; then
    export GITFLEET_MOTO_SERVER=$HOME/.cache/gitfleet/venv/bin/moto_server
fi

echo "== build (gitfleet-agent: $AGENT_PROFILE, bench-agent: release)"
cargo build --locked --profile "$AGENT_PROFILE" -p gitfleet-agent --bin gitfleet-agent
cargo build --locked --release -p gitfleet-tests --bin bench-agent
AGENT=$(realpath "$TARGET/$AGENT_PROFILE/gitfleet-agent")
BENCH=$(realpath "$TARGET/release/bench-agent")

echo "== machine"
echo "cpus: $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "tmp: $(df -T "${TMPDIR:-/tmp}" | awk 'NR == 2 { print $2 }') at ${TMPDIR:-/tmp}"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

ARGS=(--agent "$AGENT" --runs "$RUNS" --polls "$POLLS")
if [[ -n $ONLY ]]; then
    ARGS+=(--only "$ONLY")
fi
"$BENCH" "${ARGS[@]}"

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit 0
