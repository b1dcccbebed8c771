#!/usr/bin/env bash
# Benchmark (not a test): a WireGuard mesh of 5,000 members.
#
#   bash bench/mesh.sh            # MEMBERS=5000 RUNS=5
#
# Goals (issue 24, "Done when"): the bundle build time, the bytes of each
# member's bundle, and the time for an agent to apply one added peer
# (one peer written, not the whole list).
#
# Builds bench-mesh (tests/src/bin/bench-mesh.rs) in release and runs it:
# the build part anywhere; the apply part as root, inside a network
# namespace this script creates, against a boringtun-cli interface it
# starts there (`cargo install boringtun-cli --locked`, or
# $GITFLEET_BORINGTUN). Without root or boringtun the apply part is
# skipped. The namespace and the boringtun process (by pid) are removed at
# exit, however the script ends. Figures are printed, never asserted.
set -euo pipefail

cd "$(dirname "$0")/.."
MEMBERS=${MEMBERS:-5000}
RUNS=${RUNS:-5}
TARGET=${CARGO_TARGET_DIR:-target}

echo "== build (release)"
cargo build --release -p gitfleet-tests --bin bench-mesh
BENCH=$(realpath "$TARGET/release/bench-mesh")

BORINGTUN=${GITFLEET_BORINGTUN:-$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")}
if [ "$(id -u)" != 0 ] || [ ! -x "$BORINGTUN" ] || [ ! -e /dev/net/tun ]; then
    echo "(no root, /dev/net/tun or boringtun-cli: the apply part is skipped)"
    exec "$BENCH" --members "$MEMBERS" --runs "$RUNS"
fi

ns="gf-bench-$$"
iface="wgb$$"
iface=${iface:0:15}
bt=
cleanup() {
    if [ -n "$bt" ] && kill -0 "$bt" 2>/dev/null; then
        kill -TERM "$bt" 2>/dev/null || true
        wait "$bt" 2>/dev/null || true
    fi
    rm -f "/var/run/wireguard/$iface.sock"
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" "$BORINGTUN" --foreground --disable-drop-privileges --threads 1 "$iface" \
    >/dev/null 2>&1 &
bt=$!
for _ in $(seq 100); do
    [ -S "/var/run/wireguard/$iface.sock" ] && break
    sleep 0.05
done
# wireguard-control prints a line for each field boringtun adds to its
# answers that it does not know; they say nothing about the figures.
ip netns exec "$ns" "$BENCH" --members "$MEMBERS" --runs "$RUNS" --apply "$iface" \
    2> >(grep -v 'got unsupported info' >&2)
