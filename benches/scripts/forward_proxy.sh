#!/usr/bin/env bash
# Forward proxies on one core: CONNECT tunnels per second and bulk tunnel throughput, lb's
# forward_proxy listener against Squid and tinyproxy (Debian's), same run, same pinning.
#
#   benches/scripts/forward_proxy.sh [SECONDS]
#
# The origin is nginx on 127.0.0.1:19621 (`/` answers 3 bytes, `/big` a 64 MiB file). Each
# proxy runs pinned to CPU 0 (lb: `lb run`, one worker thread; Squid: one worker, no cache;
# tinyproxy: its default process pool), `lb bench -x` on CPU 1 drives it:
#   - tunnels/s: a new CONNECT tunnel per request (connect, CONNECT, 200, one small GET,
#     close), 32 connections, SECONDS (default 10) after 2 s of warm-up;
#   - MB/s: 4 kept-alive tunnels downloading /big over and over.
# Reported: rate, p99, errors, and CPU seconds the proxy used per 1000 tunnels (from
# /proc/PID/stat of the proxy's processes), then lb / Squid ratios (target: tunnels/s >= 2x
# per core, shown as the rate and as tunnels per proxy CPU-second; MB/s >= 1x). Needs squid,
# tinyproxy and nginx (apt-get install squid tinyproxy nginx-light).
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
for tool in squid tinyproxy nginx taskset; do
    command -v "$tool" > /dev/null || { echo "needs $tool (apt-get install squid tinyproxy nginx-light)" >&2; exit 1; }
done
cargo build --release -q -p lb-userspace --bin lb
LB=$PWD/target/release/lb
DIR=$(mktemp -d /tmp/lb-fwd-bench.XXXXXX)
chmod 755 "$DIR"
trap 'set +e; kill $(jobs -p) 2>/dev/null; pkill -f "$DIR/" ; nginx -p "$DIR" -c "$DIR/nginx.conf" -s stop 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT

head -c $((64 << 20)) /dev/zero > "$DIR/big"
cat > "$DIR/nginx.conf" <<NGINX
daemon on;
pid $DIR/nginx.pid;
error_log $DIR/nginx.err;
worker_processes 1;
events { worker_connections 8192; }
http {
    access_log off;
    server {
        listen 127.0.0.1:19621 reuseport backlog=4096;
        keepalive_requests 1000000;
        location = / { return 200 "ok\n"; }
        location = /big { alias $DIR/big; }
    }
}
NGINX
taskset -c 1 nginx -p "$DIR" -c "$DIR/nginx.conf"

cat > "$DIR/lb.toml" <<TOML
[[listener]]
name = "egress"
address = "127.0.0.1:19622"
mode = "forward_proxy"
max_connections = 20000
  [[listener.egress_rule]]
  name = "origin"
  action = "allow"
  cidrs = ["127.0.0.1/32"]
  ports = [19621]
TOML
cat > "$DIR/squid.conf" <<SQUID
http_port 127.0.0.1:19623
pid_filename $DIR/squid.pid
cache_log $DIR/squid-cache.log
access_log none
cache deny all
cache_mem 8 MB
coredump_dir $DIR
acl origin port 19621
acl CONNECT method CONNECT
http_access allow CONNECT origin
http_access deny all
workers 1
max_filedescriptors 65536
SQUID
cat > "$DIR/tinyproxy.conf" <<TINY
Port 19624
Listen 127.0.0.1
Timeout 60
MaxClients 1024
Allow 127.0.0.1
ConnectPort 19621
LogLevel Critical
PidFile "$DIR/tinyproxy.pid"
TINY

wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 never opened" >&2
    return 1
}

# CPU seconds (user + system) used so far by the processes whose command line mentions $DIR
# config NAME (the proxy and its helpers).
cpu_of() {
    local total=0 ticks
    ticks=$(getconf CLK_TCK)
    for pid in $(pgrep -f "$1"); do
        if [ -r "/proc/$pid/stat" ]; then
            total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
        fi
    done
    awk -v t="$total" -v k="$ticks" 'BEGIN { printf "%.3f", t / k }'
}

measure() { # NAME PORT MATCH
    local name=$1 port=$2 match=$3 before after
    wait_port "$port"
    before=$(cpu_of "$match")
    taskset -c 1 "$LB" bench --json --threads 1 -x "http://127.0.0.1:$port" --no-keepalive \
        -c 32 --warmup 2s -d "$SECS" http://127.0.0.1:19621/ > "$DIR/$name-tunnels.json" || true
    after=$(cpu_of "$match")
    echo "$before $after" > "$DIR/$name-cpu"
    before=$(cpu_of "$match")
    taskset -c 1 "$LB" bench --json --threads 1 -x "http://127.0.0.1:$port" \
        -c 4 --warmup 2s -d "$SECS" http://127.0.0.1:19621/big > "$DIR/$name-bulk.json" || true
    after=$(cpu_of "$match")
    echo "$before $after" > "$DIR/$name-bulk-cpu"
}

taskset -c 0 "$LB" run --config "$DIR/lb.toml" --threads 1 --admin 127.0.0.1:19625 > "$DIR/lb.out" 2>&1 &
measure lb 19622 "$DIR/lb.toml"
kill %1 2>/dev/null || true

taskset -c 0 squid -N -f "$DIR/squid.conf" > "$DIR/squid.out" 2>&1 &
measure squid 19623 "$DIR/squid.conf"
squid -f "$DIR/squid.conf" -k shutdown 2>/dev/null || true

taskset -c 0 tinyproxy -d -c "$DIR/tinyproxy.conf" > "$DIR/tinyproxy.out" 2>&1 &
measure tinyproxy 19624 "$DIR/tinyproxy.conf"

python3 - "$DIR" <<'PY'
import json, sys
d = sys.argv[1]
rows = {}
print(f"{'proxy':10} {'tunnels/s':>10} {'p99 ms':>8} {'errors':>7} {'CPU ms/1000 tunnels':>20} {'bulk MB/s':>10} {'bulk errors':>11} {'CPU s/GB':>9}")
for name in ["lb", "squid", "tinyproxy"]:
    try:
        t = json.load(open(f"{d}/{name}-tunnels.json"))
        b = json.load(open(f"{d}/{name}-bulk.json"))
    except (OSError, ValueError) as e:
        print(f"{name:10} no result: {e}")
        continue
    before, after = map(float, open(f"{d}/{name}-cpu").read().split())
    # CPU over the whole tunnels run (warm-up included) per tunnel made in it.
    made = t["requests"] * (1 + 2 / t["duration_s"]) if t["duration_s"] else 0
    cpu = (after - before) * 1e6 / made if made else float("nan")
    p99 = (t.get("latency_us") or {}).get("p99")
    # Bulk: CPU over the whole run (warm-up included) per GB moved in it.
    bulk_before, bulk_after = map(float, open(f"{d}/{name}-bulk-cpu").read().split())
    moved = b["throughput_bytes_per_s"] * (b["duration_s"] + 2) / 1e9
    per_gb = (bulk_after - bulk_before) / moved if moved else float("nan")
    rows[name] = (t["rps"], b["throughput_bytes_per_s"] / 1e6, cpu, per_gb)
    print(f"{name:10} {t['rps']:>10.0f} {p99 / 1000 if p99 else float('nan'):>8.2f} {t['errors']:>7} "
          f"{cpu:>20.1f} {b['throughput_bytes_per_s'] / 1e6:>10.0f} {b['errors']:>11} {per_gb:>9.2f}")
if "lb" in rows and "squid" in rows:
    lb, sq = rows["lb"], rows["squid"]
    print(f"lb / squid: tunnels/s {lb[0] / sq[0]:.2f}x (target >= 2x), MB/s {lb[1] / sq[1]:.2f}x (target >= 1x)")
    # Per core: tunnels per CPU-second of the proxy. The rate above is capped by the client
    # and origin sharing CPU 1 when the proxy does not fill CPU 0.
    print(f"lb / squid per core (tunnels per proxy CPU-second): {sq[2] / lb[2]:.2f}x (target >= 2x), "
          f"bytes per proxy CPU-second {sq[3] / lb[3]:.2f}x")
if "lb" in rows and "tinyproxy" in rows:
    lb, tp = rows["lb"], rows["tinyproxy"]
    print(f"lb / tinyproxy: tunnels/s {lb[0] / tp[0]:.2f}x, MB/s {lb[1] / tp[1]:.2f}x")
PY
