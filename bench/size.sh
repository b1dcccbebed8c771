#!/usr/bin/env bash
# Binary size and start-up time of gitfleet-agent and gitfleet, built with
# the release profile (the demo, `cargo install`) and the dist profile (what
# to ship: LTO, one codegen unit, abort on panic), in the same run.
#
#   bash bench/size.sh            # RUNS=200 start-ups each
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-200}"
for profile in release dist; do
    start=$(date +%s)
    cargo build -q --locked --profile "$profile" -p gitfleet-agent -p gitfleet-reconciler
    echo "$profile: built in $(( $(date +%s) - start )) s (incremental over what was built)"
done
startup() {
    local bin="$1" s e
    s=$(date +%s%N)
    for _ in $(seq "$runs"); do "$bin" --version >/dev/null; done
    e=$(date +%s%N)
    echo $(( (e - s) / runs / 1000 ))
}
printf '%-16s %-8s %12s %14s\n' binary profile bytes "start-up (us)"
for bin in gitfleet-agent gitfleet; do
    base=""
    for profile in release dist; do
        path="target/$profile/$bin"
        us=$(startup "$path")
        printf '%-16s %-8s %12s %14s' "$bin" "$profile" "$(stat -c %s "$path")" "$us"
        if [ -z "$base" ]; then
            base="$us"
            echo
        else
            awk -v a="$us" -v b="$base" 'BEGIN { printf "   (%.2fx the release start-up)\n", a / b }'
        fi
    done
done
