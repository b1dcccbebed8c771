#!/usr/bin/env bash
# The whole test suite with everything it needs: installs what is missing
# (git, moto in a venv under ~/.cache/gitfleet, the Sentinel and Zentinel
# proxies, boringtun, Chromium and playwright-core), then runs `cargo test` on the
# workspace. On a fresh machine the installs and the build take about 45
# minutes on 2 cores and 12 GB of disk; a second run reuses them.
#
#   bash scripts/test.sh                # everything
#   bash scripts/test.sh -p gitfleet-policy   # arguments go to cargo test
#
# Debian's packages are installed with apt-get (as root, or through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

# git is used by the end-to-end tests (real repositories, file:// clones).
if ! command -v git >/dev/null; then
    log "installing git"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends git ca-certificates
fi

# moto_server: a real S3 API on 127.0.0.1 for the object-store tests
# (gitfleet-io's test servers start one per test). Kept in a reused venv.
venv="$HOME/.cache/gitfleet/venv"
if [ ! -x "$venv/bin/moto_server" ]; then
    log "installing moto"
    if ! python3 -m venv "$venv"; then
        # Debian and Ubuntu ship venv's ensurepip in a separate package.
        rm -rf "$venv"
        as_root apt-get update -qq
        as_root apt-get install -y -qq --no-install-recommends python3-venv
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5'
fi
export GITFLEET_MOTO_SERVER="$venv/bin/moto_server"

# The real Sentinel proxy, which tests/src/sentinel.rs starts. A debug build
# (about 6 minutes on 2 cores); kept in cargo's bin directory and reused
# while `sentinel --version` says "sentinel 0.4.14 (...)".
sentinel_version=0.4.14
sentinel="${CARGO_HOME:-$HOME/.cargo}/bin/sentinel"
if [[ "$("$sentinel" --version 2>/dev/null)" != "sentinel $sentinel_version "* ]]; then
    # Its build needs protoc (gRPC agent protocol) and cmake (libz-ng-sys,
    # aws-lc-sys).
    missing=()
    command -v protoc >/dev/null || missing+=(protobuf-compiler)
    command -v cmake >/dev/null || missing+=(cmake)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root apt-get update -qq
        as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    log "installing sentinel-proxy $sentinel_version"
    # Without overflow checks, as in a release build: with them, 0.4.14's
    # active-request counter underflows and a panic drops connections.
    # Without debug info: the build directory is several GiB smaller.
    CARGO_PROFILE_DEV_OVERFLOW_CHECKS=false CARGO_PROFILE_DEV_DEBUG=0 \
        cargo install sentinel-proxy --version "$sentinel_version" --locked --debug
fi
export GITFLEET_SENTINEL="$sentinel"

# The real Zentinel proxy (Sentinel's successor, renamed in 2026), which
# the mixed-fleet test (tests/tests/mixed_proxies_e2e.rs) runs beside
# Sentinel. 0.6.45 is the newest release whose rust-version the toolchain
# (1.95) meets. A debug build as Sentinel's (about 7 minutes on 2 cores);
# reused while `zentinel --version` says "zentinel 0.6.45 (...)".
zentinel_version=0.6.45
zentinel="${CARGO_HOME:-$HOME/.cargo}/bin/zentinel"
if [[ "$("$zentinel" --version 2>/dev/null)" != "zentinel $zentinel_version "* ]]; then
    log "installing zentinel-proxy $zentinel_version"
    CARGO_PROFILE_DEV_OVERFLOW_CHECKS=false CARGO_PROFILE_DEV_DEBUG=0 \
        cargo install zentinel-proxy --version "$zentinel_version" --locked --debug
fi
export GITFLEET_ZENTINEL="$zentinel"

# Userspace WireGuard for the mesh end-to-end test (tests/tests/wireguard_e2e.rs):
# boringtun-cli interfaces in network namespaces, set up with `ip` and checked
# with `ping`. A release build (about 1.5 minutes on 2 cores), reused while
# `boringtun-cli --version` works.
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v ping >/dev/null || missing+=(iputils-ping)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
boringtun="$(command -v boringtun-cli || echo "${CARGO_HOME:-$HOME/.cargo}/bin/boringtun-cli")"
if ! "$boringtun" --version >/dev/null 2>&1; then
    log "installing boringtun-cli"
    cargo install boringtun-cli --locked
    boringtun="${CARGO_HOME:-$HOME/.cargo}/bin/boringtun-cli"
fi
export GITFLEET_BORINGTUN="$boringtun"

# openssl makes the HTTPS test's certificates and reads the one served;
# curl is its HTTPS client (tests/tests/serve_tls_e2e.rs).
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# promtool checks and unit-tests the shipped alerting rules
# (tests/tests/alert_rules.rs); Debian ships it with prometheus.
if ! command -v promtool >/dev/null; then
    log "installing prometheus (for promtool)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi

# Headless Chromium driven by Playwright for the status-page browser test
# (tests/tests/browser_e2e.rs): Debian's chromium, and playwright-core from
# tests/browser/package-lock.json (it never downloads a browser).
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
playwright_version=$(python3 -c 'import json; print(json.load(open("tests/browser/package.json"))["dependencies"]["playwright-core"])')
installed=$(python3 -c 'import json; print(json.load(open("tests/browser/node_modules/playwright-core/package.json"))["version"])' 2>/dev/null || true)
if [ "$installed" != "$playwright_version" ]; then
    log "installing playwright-core $playwright_version"
    (cd tests/browser && npm ci --no-audit --no-fund)
fi
export GITFLEET_CHROMIUM=/usr/bin/chromium

# One clean build: incremental compilation state would only take disk
# (about a third more under target/).
export CARGO_INCREMENTAL=0

if [ $# -gt 0 ]; then
    log "tests: cargo test $*"
    cargo test --locked --no-fail-fast "$@"
    exit
fi

log "tests"
# Servers the tests start (git daemon, moto, Sentinel, boringtun) must all
# be gone when they end, pass or fail: any new one still running is a leak.
server_pids() {
    pgrep -f -- '(git-daemon|moto_server|/sentinel |/zentinel |boringtun-cli)' | sort || true
}
servers_before="$(server_pids)"
# Every test, even after one fails, so one run shows every problem.
cargo test --workspace --locked --no-fail-fast
sleep 1
leaked="$(comm -13 <(echo "$servers_before") <(server_pids))"
if [ -n "$leaked" ]; then
    echo "servers the tests started are still running:" >&2
    ps -o pid,ppid,args -p $leaked >&2 || true
    exit 1
fi

log "all tests passed"
