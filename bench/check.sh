#!/usr/bin/env bash
# Benchmark (not a test): `gitfleet check` on a generated fleet repo of
# 10,000 nodes and 200 Sentinel configs. Goal: under 3 s on a 2-core machine.
#
#   bash bench/check.sh
#
# Builds release binaries, generates the repo once (tests/src/bin/gen-fleet.rs)
# into a temp dir, then times, several runs each:
#   baseline: reading every file of the repo  (find -exec cat | wc -c)
#   check:    gitfleet check DIR
# and prints the median of both, the ratio check/baseline, PASS/FAIL against
# the goal, and the peak RSS of one check. Results are printed, never
# asserted: the script exits 0 whatever the timing, and non-zero only when
# the build, the generator or the check itself fails.
#
# Environment: NODES (10000), CONFIGS (200), RUNS (10), GOAL_SECONDS (3),
# KEEP=1 to keep the generated repo.
set -euo pipefail

cd "$(dirname "$0")/.."
NODES=${NODES:-10000}
CONFIGS=${CONFIGS:-200}
RUNS=${RUNS:-10}
GOAL_SECONDS=${GOAL_SECONDS:-3}
TARGET=${CARGO_TARGET_DIR:-target}

echo "== build (release)"
cargo build --release -p gitfleet-reconciler --bin gitfleet
cargo build --release -p gitfleet-tests --bin gen-fleet
GITFLEET=$(realpath "$TARGET/release/gitfleet")
GEN=$(realpath "$TARGET/release/gen-fleet")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gitfleet-bench.XXXXXX")
if [[ ${KEEP:-0} == 1 ]]; then
    echo "keeping $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
REPO=$WORK/fleet

echo "== generate $NODES nodes, $CONFIGS configs"
"$GEN" --nodes "$NODES" --configs "$CONFIGS" --out "$REPO"

echo "== verify: the generated repo must check clean"
if ! out=$("$GITFLEET" check --color never "$REPO" 2>&1); then
    echo "$out" | tail -20
    echo "FAIL: gitfleet check reported errors on the generated repo" >&2
    exit 1
fi
echo "$out" | tail -1
if [[ $(echo "$out" | wc -l) -ne 1 ]]; then
    echo "$out" | tail -20
    echo "FAIL: gitfleet check printed diagnostics on the generated repo" >&2
    exit 1
fi

echo "== machine"
echo "cpus: $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "load average before timing: $(cut -d' ' -f1-3 /proc/loadavg)"

BASELINE_CMD="find '$REPO' -type f -exec cat {} + | wc -c > /dev/null"
CHECK_CMD="'$GITFLEET' check --color never '$REPO' > /dev/null"

# Median of the numbers on stdin, one a line.
median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

if command -v hyperfine > /dev/null; then
    echo "== timing with hyperfine ($RUNS runs each, 1 warm-up)"
    hyperfine --style basic --warmup 1 --runs "$RUNS" \
        --export-csv "$WORK/times.csv" \
        -n baseline "$BASELINE_CMD" \
        -n check "$CHECK_CMD"
    # command,mean,stddev,median,user,system,min,max
    BASE=$(awk -F, '$1 == "baseline" { print $4 }' "$WORK/times.csv")
    CHECK=$(awk -F, '$1 == "check" { print $4 }' "$WORK/times.csv")
else
    echo "== timing with a shell loop ($RUNS runs each, 1 warm-up; no hyperfine)"
    time_runs() {
        bash -c "$1"
        for _ in $(seq "$RUNS"); do
            local s e
            s=$(date +%s%N)
            bash -c "$1"
            e=$(date +%s%N)
            echo "$(( e - s ))" | awk '{ printf "%.6f\n", $1 / 1e9 }'
        done | median
    }
    BASE=$(time_runs "$BASELINE_CMD")
    CHECK=$(time_runs "$CHECK_CMD")
fi

RSS="n/a"
if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -v "$GITFLEET" check --color never "$REPO" > /dev/null 2> "$WORK/time-v.txt"
    RSS_KB=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$WORK/time-v.txt")
    RSS="$(awk -v k="$RSS_KB" 'BEGIN { printf "%.1f MiB", k / 1024 }')"
fi

echo "== result: gitfleet check, $NODES nodes, $CONFIGS configs"
awk -v b="$BASE" -v c="$CHECK" -v goal="$GOAL_SECONDS" -v rss="$RSS" 'BEGIN {
    printf "baseline (read every file)   median %.3f s\n", b
    printf "gitfleet check               median %.3f s\n", c
    printf "ratio check/baseline         %.1fx\n", c / b
    printf "peak RSS of gitfleet check   %s\n", rss
    printf "goal < %g s                   %s\n", goal, (c < goal ? "PASS" : "FAIL")
}'
echo "load average after timing: $(cut -d' ' -f1-3 /proc/loadavg)"
exit 0
