#!/usr/bin/env bash
# Benchmark (issue 30): `gitfleet status`, one `gitfleet reconcile
# --once --dry-run` pass (observe and decide, no writes) and one writing
# `reconcile --once` pass from an empty cache, over `git daemon`, on a
# fleet repo whose state branch has STATE commits (default 100,000) and
# whose main has MAIN commits (default 10,000), against the same repo with
# a 50-commit state branch, in the same run; and on a "deep" repo whose
# configs last changed MAIN commits down main (the walk to them fetches
# that much of main: the worst case).
#
#   bash bench/cold-start.sh              # STATE=, MAIN=, PROFILE=dev, KEEP=1
#
# Prints wall time and peak RSS of each cold start (/usr/bin/time), the
# ratios, and how much of main the deep repo's cache fetched. The
# histories are made with `git fast-import`: each main commit rewrites a
# scratch file (history.txt), each state commit rollouts/history.txt; main's
# tip (or, in the deep repo, its 10,000th ancestor) adds the example fleet.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

STATE=${STATE:-100000}
MAIN=${MAIN:-10000}
bench_build
bench_workdir

# Commits of `path` rewritten `n` times on `branch`, in fast-import's
# format, the first one on top of `from` (a commit-ish) when given.
history() {
    local branch=$1 n=$2 path=$3 from=${4:-}
    awk -v n="$n" -v branch="$branch" -v path="$path" -v from="$from" 'BEGIN {
        for (i = 1; i <= n; i++) {
            data = "step " i "\n"
            printf "commit refs/heads/%s\nmark :%d\ncommitter bench <bench@example.invalid> %d +0000\ndata 5\nstep\n", branch, i, 1700000000 + i
            if (i > 1) printf "from :%d\n", i - 1
            else if (from != "") printf "from %s\n", from
            printf "M 100644 inline %s\ndata %d\n%s\n", path, length(data), data
        }
    }'
}

make_repo() { # dir state-commits [deep]
    local dir=$1 state=$2 deep=${3:-}
    git init -q --bare -b main "$dir/fleet.git"
    if [ -z "$deep" ]; then
        # main: MAIN commits of a scratch file, then the example fleet on top.
        history main "$MAIN" history.txt | git -C "$dir/fleet.git" fast-import --quiet
    fi
    git clone -q "$dir/fleet.git" "$dir/work" 2>/dev/null
    cp -r examples/fleet-repo/. "$dir/work/"
    git -C "$dir/work" add -A
    git -C "$dir/work" -c user.name=bench -c user.email=bench@example.invalid commit -qm "the example fleet"
    git -C "$dir/work" push -q origin main
    if [ -n "$deep" ]; then
        # deep: the example fleet first, then MAIN commits of a scratch
        # file on top: every config's last change is MAIN commits down.
        history main "$MAIN" history.txt refs/heads/main^0 | git -C "$dir/fleet.git" fast-import --quiet
    fi
    # the state branch: `state` commits of one file.
    history gitfleet/state "$state" rollouts/history.txt | git -C "$dir/fleet.git" fast-import --quiet --force
    git -C "$dir/fleet.git" gc -q
}

echo "== repos: state $STATE commits and 50 commits, main $MAIN commits each"
echo "   (deep: state $STATE commits, the configs last changed $MAIN commits down main)"
mkdir -p "$work/big" "$work/small" "$work/deep" "$work/store"
make_repo "$work/big" "$STATE"
make_repo "$work/small" 50
make_repo "$work/deep" "$STATE" deep
du -sh "$work/big/fleet.git" "$work/small/fleet.git" "$work/deep/fleet.git"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# receive-pack: a real pass pushes its state commit.
git daemon --reuseaddr --enable=receive-pack --base-path="$work" --export-all --listen=127.0.0.1 --port="$port" "$work" &
pid=$!
sleep 1

"$GITFLEET" keygen --online -o "$work/online.key" > /dev/null 2>&1

cold() { # command repo
    local what=$1 repo=$2
    rm -rf "$work/cache-$repo"
    local args=(status --store "file://$work/store")
    local expect="edge-fra-1"
    if [ "$what" = reconcile ]; then
        args=(reconcile --once --dry-run --store "file://$work/store" --online-key "$work/online.key")
        expect="dry run: nothing uploaded"
    fi
    if [ "$what" = pass ]; then
        # A pass that writes: bundles and channels to a new store each run,
        # the state commit pushed over git:// (the first run; later ones
        # find the state as it is).
        rm -rf "$work/store-$repo"
        args=(reconcile --once --store "file://$work/store-$repo" --online-key "$work/online.key")
        expect="published channels/"
    fi
    /usr/bin/time -f "%e %M" -o "$work/time" \
        "$GITFLEET" "${args[@]}" --repo "git://127.0.0.1:$port/$repo/fleet.git" \
        --cache "$work/cache-$repo" --color never > "$work/out" 2>&1 || true
    # status exits 1 while nodes are unreported, as here; each must have
    # read the fleet.
    grep -q "$expect" "$work/out" || { cat "$work/out"; exit 1; }
    read -r secs kib < <(tail -n 1 "$work/time")
    printf '%-9s %-6s %6.2f s  %6.1f MiB\n' "$what" "$repo" "$secs" "$(echo "$kib / 1024" | bc -l)"
    echo "$secs" > "$work/secs-$what-$repo"
}

echo "== cold starts (empty cache)"
for run in 1 2 3; do
    echo "-- run $run"
    for what in status reconcile pass; do
        cold "$what" small
        cold "$what" big
        cold "$what" deep
    done
done
for what in status reconcile pass; do
    for repo in big deep; do
        echo "$what: ratio $repo/small (last run): $(echo "$(cat "$work/secs-$what-$repo") / $(cat "$work/secs-$what-small")" | bc -l | cut -c1-5)"
    done
done
# What the deep repo's cache holds of main after a pass: the walk to each
# config's last change fetched that far, no further.
echo "deep: main commits in the cache: $(git -C "$work/cache-deep" rev-list --count refs/remotes/origin/main) of $(git -C "$work/deep/fleet.git" rev-list --count main)"
