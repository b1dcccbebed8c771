#!/usr/bin/env bash
# Benchmark (not a test): server time of the status pages for a fleet of
# NODES nodes, every one with a verified status report (issue 8's goal:
# the overview under 200 ms).
#
#   bash bench/status-page.sh                  # 10,000 nodes, release build
#   NODES=1000 PROFILE=dev bash bench/status-page.sh
#
# The fleet is generated (tests/src/bin/gen-fleet.rs). `gitfleet up` runs
# it with simulated agents until every node has reported once, and is
# stopped; then `gitfleet serve` serves that fleet with no agents running,
# so nothing else competes for the CPU. Each page is fetched REPEAT times
# with curl, next to /healthz (the same server and connection set-up,
# no work) as the baseline: a page's server time is its median minus the
# baseline's. Results are printed, never asserted.
set -euo pipefail

cd "$(dirname "$0")/.."
NODES=${NODES:-10000}
CONFIGS=${CONFIGS:-20}
REPEAT=${REPEAT:-20}
. bench/lib.sh
bench_build gen-fleet
bench_workdir

echo "== generate $NODES nodes, $CONFIGS configs"
"$GEN" --nodes "$NODES" --configs "$CONFIGS" --out "$work/repo" >/dev/null
cd "$work"

echo "== gitfleet up until all $NODES nodes have reported"
"$GITFLEET" up repo --dir demo --poll 30s --interval 10s --apply-latency 10ms \
    > up.out 2> up.err &
pid=$!
started=$(date +%s)
while :; do
    n=$({ find demo/store/status -name '*.json' 2>/dev/null || true; } | wc -l)
    [ "$n" -ge "$NODES" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then cat up.err; exit 1; fi
    if [ $(( $(date +%s) - started )) -gt 900 ]; then
        echo "only $n of $NODES nodes reported in 15 min"; exit 1
    fi
    sleep 2
done
kill -TERM "$pid"; wait "$pid" || true; pid=

echo "== gitfleet serve (no agents)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$GITFLEET" serve --repo demo/fleet.git --online-key demo/keys/online.key \
    --holder gitfleet-up --cache serve-mirror --interval 10m --stale-after 1h \
    --listen "127.0.0.1:$port" > serve.out 2> serve.err &
pid=$!
base="http://127.0.0.1:$port"
until curl -sf "$base/readyz" > /dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then cat serve.err; exit 1; fi
    sleep 0.5
done
reported=$(curl -s "$base/api/status" | python3 -c 'import json,sys; v=json.load(sys.stdin); t=v["totals"]; print(t["nodes"]-t["unreported"])')
echo "serving $reported reporting nodes"

median() {
    local url=$1
    for _ in $(seq "$REPEAT"); do
        curl -s -o /dev/null -w '%{time_total}\n' "$url"
    done | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}
base_s=$(median "$base/healthz")
printf '%-28s %9s %9s\n' page "median" "server"
ms() { awk -v a="$1" -v b="${2:-0}" 'BEGIN { printf "%.1f", (a - b) * 1000 }'; }
printf '%-28s %8sms %9s\n' /healthz "$(ms "$base_s")" "(baseline)"
for page in / /nodes /api/status "/nodes?env=prod" /rollouts /metrics; do
    m=$(median "$base$page")
    server=$(ms "$m" "$base_s")
    printf '%-28s %8sms %7sms\n' "$page" "$(ms "$m")" "$server"
    if [ "$page" = / ]; then overview=$server; fi
done
bytes=$(curl -s "$base/" | wc -c)
echo "overview: $bytes bytes of HTML for $NODES nodes"
if awk -v o="$overview" 'BEGIN { exit !(o < 200) }'; then
    echo "PASS: overview server time $overview ms < 200 ms"
else
    echo "FAIL: overview server time $overview ms >= 200 ms"
fi
