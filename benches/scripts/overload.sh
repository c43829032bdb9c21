#!/usr/bin/env bash
# Overload: what lb's load shedding does for a backend offered 5x what it can serve.
#
#   benches/scripts/overload.sh [SECONDS]
#
# The backend (Python asyncio, below) serves at most 10 requests at once and takes 100 ms for
# each: a capacity of ~100 req/s; more requests wait in its queue. `lb run` sits in front
# (one pool, one backend, retries = 0), `lb bench` offers load open-loop (latency from each
# request's intended send time, so queueing anywhere counts). Runs, SECONDS each (default 10)
# after 2 s of warm-up:
#   - unloaded: 20 req/s through lb with adaptive_concurrency (the reference p99);
#   - none:     500 req/s, no guard: everything queues at the backend;
#   - breaker:  500 req/s, [pool.circuit_breaker] max_requests = 12 (a static cap, tuned
#               by hand to this backend);
#   - adaptive: 500 req/s, [pool.adaptive_concurrency] with its defaults (nothing tuned).
# Reported per run: admitted (2xx) p50/p99, refused (non-2xx, lb's 503s) p50/p99, counts and
# transport errors (timeouts at lb bench's 10 s). Targets: with shedding, admitted p99 < 3x
# the unloaded p99 and refusals answered in < 5 ms.
# Needs loopback ports 19601-19603 and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN=${1:-10}
cargo build --release -q -p lb-userspace --bin lb
LB=$PWD/target/release/lb
DIR=$(mktemp -d /tmp/lb-overload.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT

cat > "$DIR/backend.py" <<'PY'
import asyncio, sys

CONCURRENCY, LATENCY = 10, 0.100
slots = None

async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            async with slots:
                await asyncio.sleep(LATENCY)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main(port):
    global slots
    slots = asyncio.Semaphore(CONCURRENCY)
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()

asyncio.run(main(int(sys.argv[1])))
PY
config() { # NAME GUARD-SECTION
    cat > "$DIR/$1.toml" <<TOML
[[pool]]
name = "web"
retries = 0
$2
[[pool.backend]]
address = "127.0.0.1:19601"
[[listener]]
name = "l"
address = "127.0.0.1:19602"
[[route]]
listener = "l"
pool = "web"
TOML
}
config none ""
config breaker $'[pool.circuit_breaker]\nmax_requests = 12'
config adaptive '[pool.adaptive_concurrency]'

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 never opened" >&2
    return 1
}
run() { # NAME CONFIG RATE (a fresh backend each time: none of a previous run's queue)
    python3 "$DIR/backend.py" 19601 &
    local backend=$!
    wait_port 19601
    "$LB" run --backends "$DIR/$2.toml" --admin 127.0.0.1:19603 --grace 100ms > "$DIR/lb.out" 2>&1 &
    local lb=$!
    wait_port 19602
    "$LB" bench --json --rate "$3" -c 400 --warmup 2s -d "${SECONDS_PER_RUN}s" \
        http://127.0.0.1:19602/ > "$DIR/$1.json"
    kill "$lb" "$backend"
    wait "$lb" "$backend" 2>/dev/null || true
}

run unloaded adaptive 20
run none none 500
run breaker breaker 500
run adaptive adaptive 500

python3 - "$DIR" <<'PY'
import json, sys
d = sys.argv[1]
def ms(us): return "-" if us is None else f"{us / 1000:.1f}"
def get(r, key, q): return (r.get(key) or {}).get(q)
rows = {n: json.load(open(f"{d}/{n}.json")) for n in ["unloaded", "none", "breaker", "adaptive"]}
print(f"{'run':9} {'rate':>5} {'ok':>6} {'refused':>7} {'errors':>6} {'secs':>6} "
      f"{'ok p50':>8} {'ok p99':>8} {'refused p50':>11} {'refused p99':>11}  (ms)")
for n, r in rows.items():
    print(f"{n:9} {r['target_rate']:>5.0f} {r['ok']:>6} {r['non_2xx']:>7} {r['errors']:>6} "
          f"{r['duration_s']:>6.1f} {ms(get(r, 'latency_2xx_us', 'p50')):>8} "
          f"{ms(get(r, 'latency_2xx_us', 'p99')):>8} "
          f"{ms(get(r, 'latency_non_2xx_us', 'p50')):>11} {ms(get(r, 'latency_non_2xx_us', 'p99')):>11}")
base = get(rows["unloaded"], "latency_2xx_us", "p99")
for n in ["breaker", "adaptive"]:
    r = rows[n]
    ok = get(r, "latency_2xx_us", "p99")
    refused = get(r, "latency_non_2xx_us", "p99")
    print(f"{n}: admitted p99 = {ok / base:.2f}x unloaded p99 (target < 3x); "
          f"refusal p99 = {ms(refused)} ms (target < 5 ms)")
PY
