#!/usr/bin/env bash
# What a `store = "redis"` rate limit costs and how exact it is across lb processes.
#
#   benches/scripts/redis_rate_limit.sh
#
# redis-server listens on a unix socket in a private directory; an NGINX backend answers
# "hello\n". Two parts:
#   1. cost: `lb l7 --threads 1` on CPU 0 (with the backend), `lb bench` and redis-server on
#      CPU 1. The same route without a limit ("none"), with a local limit ("local") and with
#      a redis-backed limit ("redis"), each limit so high that every request is allowed (one
#      key: every request makes the Redis round trip). Latency p50/p99 from an open-loop
#      `lb bench` at 2000 req/s for 5 s (the added latency is the round trip); lb's CPU time
#      per request from /proc over a closed-loop run (50 connections, 5 s). 2 rounds each.
#   2. accuracy: three `lb l7` processes with the same limit (300/s, burst 30, one key),
#      each offered 300 req/s (3x the limit in total) for 10 s: the sum they accept against
#      300 x 10 + 30.
# Needs nginx, redis-server, taskset and loopback ports 19511-19515.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p lb-userspace --bin lb
LB=$PWD/target/release/lb
DIR=$(mktemp -d /tmp/lb-redis-rl.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT

taskset -c 1 redis-server --port 0 --unixsocket "$DIR/redis.sock" --unixsocketperm 700 \
    --save "" --appendonly no --dir "$DIR" > "$DIR/redis.log" 2>&1 &
until [ -S "$DIR/redis.sock" ]; do sleep 0.05; done

cat > "$DIR/backend.conf" <<CONF
worker_processes 1; daemon off; master_process off; pid $DIR/nginx.pid; error_log $DIR/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19511; location / { return 200 "hello\n"; } } }
CONF
taskset -c 0 nginx -c "$DIR/backend.conf" &

config() { # PORT LIMIT(none|local|redis) RATE BURST
    cat <<TOML
[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:19511"
[[listener]]
name = "l"
address = "127.0.0.1:$1"
[[route]]
name = "bench"
listener = "l"
pool = "web"
TOML
    case $2 in
    none) ;;
    local) printf '[[route.rate_limit]]\nname = "rl"\nkey = "route"\nrate = "%s"\nburst = %s\n' "$3" "$4" ;;
    redis) printf '[[route.rate_limit]]\nname = "rl"\nkey = "route"\nrate = "%s"\nburst = %s\nstore = "redis"\nredis = "%s"\nredis_timeout = "20ms"\nnodes = 3\n' \
        "$3" "$4" "redis+unix://$DIR/redis.sock" ;;
    esac
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_lb() { # CPU CONFIG PORT -> pid in $LB_PID
    taskset -c "$1" "$LB" l7 --threads 1 --config "$2" > "$2.out" 2>&1 &
    LB_PID=$!
    until grep -q "127.0.0.1:$3" "$2.out" 2>/dev/null; do
        kill -0 $LB_PID || { cat "$2.out"; exit 1; }
        sleep 0.05
    done
}

field() { python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }

cost() { # NAME
    config 19512 "$1" "1000000/s" 1000000 > "$DIR/$1.toml"
    start_lb 0 "$DIR/$1.toml" 19512
    local pid=$LB_PID
    # Warm up (connection to Redis, script cached).
    taskset -c 1 "$LB" bench --threads 1 -c 4 -n 2000 http://127.0.0.1:19512/ > /dev/null
    local lat; lat=$(taskset -c 1 "$LB" bench --json --threads 1 -c 50 --rate 2000 -d 5s http://127.0.0.1:19512/)
    local before; before=$(ticks $pid)
    local json; json=$(taskset -c 1 "$LB" bench --json --threads 1 -c 50 -d 5s http://127.0.0.1:19512/)
    local after; after=$(ticks $pid)
    kill $pid; wait $pid 2>/dev/null || true
    local ok; ok=$(printf '%s' "$json" | field 'j["ok"]')
    local p; p=$(printf '%s' "$lat" | field "f'p50 {j[\"latency_us\"][\"p50\"]} us, p99 {j[\"latency_us\"][\"p99\"]} us, ok {j[\"ok\"]}, non-2xx {j[\"non_2xx\"]}, errors {j[\"errors\"]}'")
    local hz; hz=$(getconf CLK_TCK)
    python3 -c "ok=$ok; t=($after-$before)/$hz; print(f'$1: open loop 2000/s: $p; closed loop {ok/5:.0f} req/s, {t*1e6/ok:.2f} us CPU/req')"
}

echo "== cost (lb on CPU 0, bench + redis on CPU 1)"
for round in 1 2; do
    for v in none local redis; do cost $v; done
done

echo "== accuracy: 3 lb processes, limit 300/s burst 30, each offered 300 req/s for 10 s"
redis_cli() { redis-cli -s "$DIR/redis.sock" "$@" > /dev/null; }
redis_cli FLUSHALL
pids=()
for i in 0 1 2; do
    port=$((19513 + i))
    config $port redis "300/s" 30 > "$DIR/acc$i.toml"
    start_lb $((i % 2)) "$DIR/acc$i.toml" $port
    pids+=("$LB_PID")
done
bpids=()
for i in 0 1 2; do
    "$LB" bench --json --threads 1 -c 20 --rate 300 -d 10s "http://127.0.0.1:$((19513 + i))/" > "$DIR/acc$i.json" &
    bpids+=($!)
done
wait "${bpids[@]}"
total=0
for i in 0 1 2; do
    ok=$(field 'j["ok"]' < "$DIR/acc$i.json")
    st=$(field 'j["status"]' < "$DIR/acc$i.json")
    echo "lb $i: accepted $ok, statuses $st"
    total=$((total + ok))
done
for p in "${pids[@]}"; do kill "$p"; done
python3 -c "t=$total; want=300*10+30; print(f'accepted {t} of {want} (limit x 10 s + burst): {100*(t-want)/want:+.1f}%')"
