#!/usr/bin/env bash
# The response cache's HIT path: requests/s and the proxy's CPU time per request for
#   - lb, the route uncached (every request goes to the backend),
#   - lb, the route with `[route.cache]` (every request after the first a HIT),
#   - NGINX proxy_cache on the same backend (every request after the first a HIT).
#
#   benches/scripts/cache_cost.sh [LB_BINARY]
#
# An NGINX backend answering a 1 KiB body with `Cache-Control: max-age=3600` and the proxy
# under test share CPU 0 (`lb l7 --threads 1`; NGINX with one worker); `lb bench` (keep-alive,
# 50 connections, 5 s) runs on CPU 1. The proxy's CPU time is its utime+stime from /proc over
# the requests. LB_BINARY defaults to a release build of this tree.
# Needs loopback ports 19521-19523, nginx and taskset.
#
# Measured 2026-12-07 on the 2-core dev VM (other builds running), one run, release lb:
#   lb uncached        19,119 req/s, 26.4 us CPU/req (the backend shares CPU 0)
#   lb cached (HIT)    27,683 req/s, 16.2 us CPU/req
#   NGINX proxy_cache  21,765 req/s, 21.6 us CPU/req (HIT)
# lb's HIT path: 1.27x NGINX's requests/s at 0.75x its CPU per request; 0.61x the CPU of the
# same route uncached.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${1:-}" ]; then
    LB=$1
else
    cargo build --release -q -p lb-userspace --bin lb
    LB=$PWD/target/release/lb
fi
DIR=$(mktemp -d /tmp/lb-cache-cost.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
head -c 1024 /dev/zero | tr '\0' 'x' > "$DIR/body.txt"

cat > "$DIR/backend.conf" <<CONF
worker_processes 1; daemon off; master_process off; pid $DIR/backend.pid; error_log $DIR/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; default_type text/plain;
  server { listen 127.0.0.1:19521; location / { root $DIR; add_header Cache-Control "max-age=3600"; } } }
CONF
taskset -c 0 nginx -c "$DIR/backend.conf" &
until curl -s -o /dev/null http://127.0.0.1:19521/body.txt; do sleep 0.05; done

pool='[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:19521"
[[listener]]
name = "l"
address = "127.0.0.1:19522"
[[route]]
listener = "l"
pool = "web"'
printf '%s\n' "$pool" > "$DIR/uncached.toml"
printf '%s\n[route.cache]\n' "$pool" > "$DIR/cached.toml"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

measure() { # NAME PID URL
    # One request first: the MISS that fills the cache.
    curl -s -o /dev/null "$3"
    local before; before=$(ticks "$2")
    local json; json=$(taskset -c 1 "$LB" bench --json --threads 1 -c 50 -d 5s --warmup 0s "$3")
    local after; after=$(ticks "$2")
    local ok; ok=$(printf '%s' "$json" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["ok"])')
    local hz; hz=$(getconf CLK_TCK)
    python3 -c "ok=$ok; t=($after-$before)/$hz; print(f'$1: {ok/5:.0f} req/s, {t*1e6/max(ok,1):.2f} us CPU/req')"
}

for variant in uncached cached; do
    taskset -c 0 "$LB" l7 --threads 1 --config "$DIR/$variant.toml" > "$DIR/lb.out" 2>&1 &
    pid=$!
    until grep -q "127.0.0.1:19522" "$DIR/lb.out" 2>/dev/null; do
        kill -0 $pid || { cat "$DIR/lb.out"; exit 1; }
        sleep 0.05
    done
    measure "lb $variant" $pid http://127.0.0.1:19522/body.txt
    echo "  X-Cache-Status of a request now: $(curl -s -o /dev/null -D - http://127.0.0.1:19522/body.txt | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache-status" {print $2}')"
    kill $pid; wait $pid 2>/dev/null || true
done

mkdir -p "$DIR/ngx-cache"
cat > "$DIR/proxy.conf" <<CONF
worker_processes 1; daemon off; master_process off; pid $DIR/proxy.pid; error_log $DIR/proxy.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  proxy_cache_path $DIR/ngx-cache keys_zone=c:10m;
  server { listen 127.0.0.1:19523;
    location / { proxy_pass http://127.0.0.1:19521; proxy_cache c;
      add_header X-Cache-Status \$upstream_cache_status; } } }
CONF
taskset -c 0 nginx -c "$DIR/proxy.conf" &
npid=$!
until curl -s -o /dev/null http://127.0.0.1:19523/body.txt; do sleep 0.05; done
measure "nginx proxy_cache" $npid http://127.0.0.1:19523/body.txt
echo "  X-Cache-Status of a request now: $(curl -s -o /dev/null -D - http://127.0.0.1:19523/body.txt | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache-status" {print $2}')"
