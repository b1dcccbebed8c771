#!/usr/bin/env bash
# Benchmark (not a test): 1,000 GitHub webhook deliveries to a running
# `gitfleet serve` on loopback, from 8 concurrent senders (issue 6's load
# test):
#   - 500 valid pushes with unique delivery ids,
#   - 250 of those sent again (the same id and body: duplicates),
#   - 250 with bad signatures (wrong secret, truncated, missing).
# It checks every invalid one got 401, every valid id got 202 exactly once
# (its redelivery 200), and that /metrics counted the same; then prints
# p50/p99 response times next to /healthz's, measured the same way in the
# same run. Results are printed; the counts are checked.
#
#   bash bench/webhooks.sh
#   PROFILE=dev bash bench/webhooks.sh
set -euo pipefail

cd "$(dirname "$0")/.."
. bench/lib.sh
bench_build
bench_workdir
cd "$work"

echo "== set up the example fleet (gitfleet up for 5 s)"
"$GITFLEET" up --dir demo --duration 5s > up.out 2> up.err
printf 'bench-secret\n' > webhook.secret
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$GITFLEET" serve --repo demo/fleet.git --online-key demo/keys/online.key \
    --holder gitfleet-up --cache serve-mirror --interval 10m \
    --listen "127.0.0.1:$port" --webhook-secret-file webhook.secret \
    --log-format json > serve.out 2> serve.err &
pid=$!
until curl -sf "http://127.0.0.1:$port/readyz" > /dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then cat serve.err; exit 1; fi
    sleep 0.5
done

python3 - "$port" <<'PY'
import hashlib, hmac, http.client, json, random, sys, threading, time

port = int(sys.argv[1])
secret = b"bench-secret"
random.seed(7)

def body(i):
    return json.dumps({"ref": "refs/heads/main", "after": f"{i:040x}",
                       "repository": {"full_name": "acme/fleet"}}).encode()

def sig(key, b):
    return "sha256=" + hmac.new(key, b, hashlib.sha256).hexdigest()

# (kind, delivery id, headers, body). Duplicates go after every original,
# and each waits for its original's answer, so it is a redelivery.
first, again = [], []
for i in range(500):
    b = body(i)
    first.append(("valid", f"v-{i}", {"X-Hub-Signature-256": sig(secret, b)}, b))
    if i < 250:
        again.append(("duplicate", f"v-{i}", {"X-Hub-Signature-256": sig(secret, b)}, b))
for i in range(250):
    b = body(10_000 + i)
    bad = [sig(b"guess", b), sig(secret, b)[:-2], None][i % 3]
    first.append(("invalid", f"x-{i}", {} if bad is None else {"X-Hub-Signature-256": bad}, b))
random.shuffle(first)
random.shuffle(again)
ordered = first + again

results = []
lock = threading.Lock()
queue = list(enumerate(ordered))
pending = {}  # delivery id -> event set once its original is answered

def sender():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while True:
        with lock:
            if not queue:
                break
            n, (kind, delivery, headers, b) = queue.pop(0)
            ev = pending.setdefault(delivery, threading.Event())
        if kind == "duplicate":
            ev.wait()
        h = {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
             "Content-Type": "application/json", **headers}
        t = time.perf_counter()
        conn.request("POST", "/webhooks/github", body=b, headers=h)
        r = conn.getresponse()
        r.read()
        dt = time.perf_counter() - t
        if kind == "valid":
            ev.set()
        with lock:
            results.append((kind, delivery, r.status, dt))

def healthz(n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        out.append(time.perf_counter() - t)
    return out

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000

base = healthz(1000)
start = time.perf_counter()
threads = [threading.Thread(target=sender) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
wall = time.perf_counter() - start

ok = True
def expect(kind, status):
    global ok
    got = [r for r in results if r[0] == kind]
    wrong = [r for r in got if r[2] != status]
    print(f"{kind:10} {len(got):4} deliveries, expected {status}: {len(got) - len(wrong)} did")
    if wrong:
        ok = False
        print("   e.g.", wrong[:3])
expect("valid", 202)
expect("duplicate", 200)
expect("invalid", 401)

conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
conn.request("GET", "/metrics")
metrics = conn.getresponse().read().decode()
counted = {}
for line in metrics.splitlines():
    if line.startswith("gitfleet_webhook_deliveries_total{"):
        outcome = line.split('"')[1]
        counted[outcome] = int(line.split()[-1])
print("metrics:", {k: v for k, v in counted.items() if v})
want = {"accepted": 500, "duplicate": 250, "bad-signature": 250}
if any(counted.get(k) != v for k, v in want.items()):
    ok = False
    print("metrics disagree with", want)

lat = [r[3] for r in results]
print(f"{len(results)} deliveries in {wall:.2f} s ({len(results) / wall:.0f}/s, 8 senders)")
print(f"webhooks: p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, max {max(lat) * 1000:.2f} ms")
print(f"/healthz: p50 {pct(base, 50):.2f} ms, p99 {pct(base, 99):.2f} ms (baseline, 1 sender)")
print(f"ratio p99 webhook / p99 healthz: {pct(lat, 99) / pct(base, 99):.1f}x")
print("PASS: every delivery handled as expected" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
