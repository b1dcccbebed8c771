#!/usr/bin/env bash
# Benchmark (not a test): building and verifying bundles.
#
#   bash bench/bundles.sh
#
# Goals (from the issue):
#   build:  bundling 200 configs takes no longer than
#           `tar --sort=name … | zstd -3` on the same files (ratio <= 1.0);
#   verify: verifying a 10 MiB bundle is within 2x of raw sha256 speed on
#           this CPU (ratio <= 2.0).
#
# Builds release binaries, generates a fleet repo once with gen-fleet
# (tests/src/bin/gen-fleet.rs), then runs bench-bundles
# (tests/src/bin/bench-bundles.rs), which measures everything and its
# baselines in the same run and prints figures, ratios and PASS/FAIL.
# Results are printed, never asserted: the script exits 0 whatever the
# timing, and non-zero only when something fails to work.
#
# verify_bundle uses two threads for bundles of 1 MiB or more (after the
# digest, one unpacks while the other hashes the files), so it needs both
# cores free to meet its goal: the load average is printed before and
# after, and bench-bundles prints it again with verify's CPU time per run.
#
# Environment: CONFIGS (200), NODES (10; only the configs matter here),
# RUNS (10), VERIFY_MIB (10), ONLY=build or ONLY=verify to run one part
# (verify needs no repo, tar or zstd), KEEP=1 to keep the generated repo.
set -euo pipefail

cd "$(dirname "$0")/.."
CONFIGS=${CONFIGS:-200}
NODES=${NODES:-10}
(( NODES >= CONFIGS )) || NODES=$CONFIGS   # gen-fleet needs a node per rollout
RUNS=${RUNS:-10}
VERIFY_MIB=${VERIFY_MIB:-10}
TARGET=${CARGO_TARGET_DIR:-target}
ONLY=${ONLY:-}
case $ONLY in
    "" | build | verify) ;;
    *) echo "FAIL: ONLY must be build or verify, not \`$ONLY'" >&2; exit 1 ;;
esac

if [[ $ONLY != verify ]]; then
    echo "== tools"
    if ! command -v tar > /dev/null; then
        echo "FAIL: tar is not installed (the baseline needs GNU tar)" >&2
        exit 1
    fi
    if ! command -v zstd > /dev/null; then
        echo "zstd is not installed; the baseline needs it:"
        echo "    apt-get install -y --no-install-recommends zstd"
        if [[ $(id -u) -eq 0 ]] && command -v apt-get > /dev/null; then
            apt-get install -y --no-install-recommends zstd
        else
            exit 1
        fi
    fi
    echo "$(tar --version | head -1); $(zstd --version)"
fi

echo "== build (release)"
cargo build --release -p gitfleet-tests --bin gen-fleet --bin bench-bundles
GEN=$(realpath "$TARGET/release/gen-fleet")
BENCH=$(realpath "$TARGET/release/bench-bundles")

ARGS=(--runs "$RUNS" --verify-mib "$VERIFY_MIB")
if [[ -n $ONLY ]]; then
    ARGS+=(--only "$ONLY")
fi
if [[ $ONLY != verify ]]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/gitfleet-bench-bundles.XXXXXX")
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "keeping $WORK"
    else
        trap 'rm -rf "$WORK"' EXIT
    fi
    REPO=$WORK/fleet
    echo "== generate $NODES nodes, $CONFIGS configs"
    "$GEN" --nodes "$NODES" --configs "$CONFIGS" --out "$REPO"
    ARGS+=(--repo "$REPO")
fi

echo "== machine"
echo "cpus: $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "sha_ni: $(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)"
echo "load average before timing: $(cut -d' ' -f1-3 /proc/loadavg)"

"$BENCH" "${ARGS[@]}"

echo "load average after timing: $(cut -d' ' -f1-3 /proc/loadavg)"
exit 0
