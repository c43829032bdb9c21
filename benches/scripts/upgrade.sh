#!/usr/bin/env bash
# Hitless upgrade under load: requests refused, reset or failed across 10 `lb upgrade`s.
#
#   benches/scripts/upgrade.sh [UPGRADES] [RATE]
#
# nginx is the backend (`return 200`), `lb run` sits in front (one pool, one listener), and
# three `lb bench` runs offer open-loop load at RATE req/s each (default 500) for the whole
# time: a new connection per request, keep-alive HTTP/1.1, and HTTP/2. Meanwhile `lb upgrade`
# replaces the process UPGRADES times (default 10), each as soon as the previous old process
# has exited. Reported per client kind: requests, ok, non-2xx, transport errors (refused,
# reset, timeout), requests resent on a new connection after lb closed an idle one (what
# every HTTP client does with a keep-alive connection a server closes), and p50/p99/max
# latency over the whole run (open loop: from each request's intended send time), next to a
# run of the same load without upgrades.
# Needs loopback ports 19611-19613 and nginx (Debian's; `cargo xtask setup` installs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
UPGRADES=${1:-10}
RATE=${2:-500}
cargo build --release -q -p lb-userspace --bin lb
LB=$PWD/target/release/lb
DIR=$(mktemp -d /tmp/lb-upgrade.XXXXXX)
# The lb an upgrade started is no job of this shell: found by its config path.
trap 'set +e; kill $(jobs -p) 2>/dev/null; pkill -f "$DIR/lb.toml"; nginx -p "$DIR" -c "$DIR/nginx.conf" -s stop 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT

cat > "$DIR/nginx.conf" <<NGINX
daemon on;
pid $DIR/nginx.pid;
error_log $DIR/nginx.err;
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen 127.0.0.1:19611 reuseport;
        keepalive_requests 1000000;
        location / { return 200 "ok\n"; }
    }
}
NGINX
cat > "$DIR/lb.toml" <<TOML
[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:19611"
[[listener]]
name = "web"
address = "127.0.0.1:19612"
[[route]]
listener = "web"
pool = "web"
TOML
nginx -p "$DIR" -c "$DIR/nginx.conf"

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 never opened" >&2
    return 1
}

# One load phase: the three clients for SECONDS while ACTION runs; JSON reports in $DIR/$1-*.json.
load() { # NAME SECONDS ACTION...
    local name=$1 secs=$2
    shift 2
    "$LB" bench --json --rate "$RATE" -c 64 --no-keepalive -d "$secs" http://127.0.0.1:19612/ > "$DIR/$name-new-connection.json" &
    local a=$!
    "$LB" bench --json --rate "$RATE" -c 16 -d "$secs" http://127.0.0.1:19612/ > "$DIR/$name-keep-alive.json" &
    local b=$!
    "$LB" bench --json --rate "$RATE" -c 4 --http 2 -d "$secs" http://127.0.0.1:19612/ > "$DIR/$name-http2.json" &
    local c=$!
    "$@"
    wait $a || true
    wait $b || true
    wait $c || true
}

"$LB" run --config "$DIR/lb.toml" --admin 127.0.0.1:19613 --grace 5s > "$DIR/lb.out" 2>&1 &
wait_port 19612

nothing() { :; }
upgrades() {
    sleep 1
    for i in $(seq "$UPGRADES"); do
        old=$(curl -s http://127.0.0.1:19613/api/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
        new=$("$LB" upgrade --json --admin 127.0.0.1:19613 | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
        # The next upgrade once the old process has drained and exited.
        while kill -0 "$old" 2>/dev/null; do sleep 0.05; done
        echo "upgrade $i: pid $old -> $new" >&2
    done
}

load baseline 8 nothing
load upgrades $((UPGRADES + 4)) upgrades

python3 - "$DIR" <<'PY'
import json, sys
d = sys.argv[1]
def ms(us): return "-" if us is None else f"{us / 1000:.2f}"
print(f"{'run':9} {'client':15} {'requests':>8} {'ok':>7} {'non-2xx':>7} {'errors':>6} {'retried':>7} "
      f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
for run in ["baseline", "upgrades"]:
    for client in ["new-connection", "keep-alive", "http2"]:
        r = json.load(open(f"{d}/{run}-{client}.json"))
        lat = r.get("latency_us") or {}
        kinds = " ".join(f"{k}={v}" for k, v in r["error_kinds"].items())
        print(f"{run:9} {client:15} {r['requests']:>8} {r['ok']:>7} {r['non_2xx']:>7} {r['errors']:>6} "
              f"{r.get('retried', 0):>7} {ms(lat.get('p50')):>7} {ms(lat.get('p99')):>7} {ms(lat.get('max')):>7} {kinds}")
PY
