#!/usr/bin/env bash
# The cost of route `compress`: throughput (MB/s of uncompressed body) and lb's CPU time per
# MiB of body for each codec at the default level, on a ~1 MiB text body, and NGINX's gzip
# (level 6, its gzip_comp_level 1 default noted too) on the same body for comparison.
#
#   benches/scripts/compress_cost.sh [LB_BINARY]
#
# An NGINX backend serving body.txt (1 MiB of generated log-like text) and `lb l7 --threads 1`
# share CPU 0; `lb bench` (keep-alive, 4 connections, 5 s) runs on CPU 1 with
# `Accept-Encoding: ENC`. lb's CPU time is its utime+stime from /proc over the requests.
# Variants: identity (no compress key), gzip, br, zstd (algorithms = [ENC]); then NGINX alone
# compressing the same file (gzip on, gzip_comp_level 6 and 1) with its own worker's CPU.
# LB_BINARY defaults to a release build of this tree (cargo build --release).
# Needs loopback ports 19511-19513, nginx and taskset.
#
# Measured 2026-12 on the 2-core dev VM, lb a dev build with the codec crates at opt-level 3
# (brotli, zlib-rs, zstd-sys, flate2, compression-codecs, async-compression), body 1 MiB of
# log-like text (compresses to ~26-28%), lb CPU per MiB of uncompressed body:
#   identity 0.5 ms; zstd (3) 6.4 ms, 154 MB/s; br (4) 19.8 ms, 53 MB/s; gzip (6, zlib-rs)
#   28 ms, 37 MB/s (57 ms with flate2's default miniz_oxide); NGINX gzip 6: 41 ms, 26 MB/s;
#   NGINX gzip 1: 7.9 ms. Output: gzip 263 KB, zstd 292 KB, br 294 KB, NGINX gzip 6 270 KB.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${1:-}" ]; then
    LB=$1
else
    cargo build --release -q -p lb-userspace --bin lb
    LB=$PWD/target/release/lb
fi
DIR=$(mktemp -d /tmp/lb-compress-cost.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT

python3 - "$DIR/body.txt" <<'PY'
import random, sys
random.seed(1)
words = "GET POST /api/v1/users /static/app.js 200 404 500 Mozilla/5.0 curl/8.5 ok error timeout upstream".split()
out = []
size = 0
i = 0
while size < 1 << 20:
    line = f'{i} 10.0.{i % 256}.{(i * 7) % 256} "{random.choice(words)} {random.choice(words)}" {random.randint(100, 99999)} {random.choice(words)}\n'
    out.append(line); size += len(line); i += 1
open(sys.argv[1], "w").write("".join(out)[: 1 << 20])
PY
SIZE=$(stat -c %s "$DIR/body.txt")

nginx_conf() { # PORT EXTRA
    cat <<CONF
worker_processes 1; daemon off; master_process off; pid $DIR/nginx-$1.pid; error_log $DIR/nginx-$1.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; default_type text/plain;
  server { listen 127.0.0.1:$1; $2 location / { root $DIR; } } }
CONF
}
nginx_conf 19511 "" > "$DIR/backend.conf"
taskset -c 0 nginx -c "$DIR/backend.conf" &

pool='[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:19511"
[[listener]]
name = "l"
address = "127.0.0.1:19512"
[[route]]
listener = "l"
pool = "web"'
printf '%s\n' "$pool" > "$DIR/identity.toml"
for enc in gzip br zstd; do
    printf '%s\n[route.compress]\nalgorithms = ["%s"]\n' "$pool" "$enc" > "$DIR/$enc.toml"
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

measure() { # NAME PID URL ENCODING
    local before; before=$(ticks "$2")
    local json; json=$(taskset -c 1 "$LB" bench --json --threads 1 -c 4 -d 5s --warmup 0s -H "Accept-Encoding: $4" "$3")
    local after; after=$(ticks "$2")
    local ok; ok=$(printf '%s' "$json" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["ok"])')
    local hz; hz=$(getconf CLK_TCK)
    python3 -c "ok=$ok; t=($after-$before)/$hz; mib=ok*$SIZE/2**20
print(f'$1: {ok/5:.1f} req/s, {mib*1.048576/5:.1f} MB/s of body, {t*1e3/max(mib,1e-9):.2f} ms CPU/MiB')"
}

for enc in identity gzip br zstd; do
    taskset -c 0 "$LB" l7 --threads 1 --config "$DIR/$enc.toml" > "$DIR/lb.out" 2>&1 &
    pid=$!
    until grep -q "127.0.0.1:19512" "$DIR/lb.out" 2>/dev/null; do
        kill -0 $pid || { cat "$DIR/lb.out"; exit 1; }
        sleep 0.05
    done
    measure "lb $enc" $pid http://127.0.0.1:19512/body.txt "$enc"
    # One response's compressed size.
    echo "  one response: $(curl -s -H "Accept-Encoding: $enc" http://127.0.0.1:19512/body.txt | wc -c) of $SIZE bytes"
    kill $pid; wait $pid 2>/dev/null || true
done

for level in 6 1; do
    nginx_conf 19513 "gzip on; gzip_comp_level $level; gzip_types text/plain; gzip_min_length 20;" > "$DIR/gzip.conf"
    taskset -c 0 nginx -c "$DIR/gzip.conf" &
    npid=$!
    until curl -s -o /dev/null http://127.0.0.1:19513/body.txt; do sleep 0.05; done
    measure "nginx gzip level $level" $npid http://127.0.0.1:19513/body.txt gzip
    echo "  one response: $(curl -s -H "Accept-Encoding: gzip" http://127.0.0.1:19513/body.txt | wc -c) of $SIZE bytes"
    kill $npid; wait $npid 2>/dev/null || true
done
