#!/usr/bin/env bash
# The cost of the L7 request pipeline and of route policies, as lb's CPU time per request.
#
#   benches/scripts/policy_cost.sh [BASELINE_LB]
#   benches/scripts/policy_cost.sh --instructions [BASELINE_LB]
#
# An NGINX backend answering "hello\n" and `lb l7 --threads 1` share CPU 0; `lb bench`
# (keep-alive, 50 connections, 5 s) runs on CPU 1. lb's CPU time per request is its
# utime+stime from /proc over the requests served. Variants, interleaved, 3 rounds:
#   - base:     BASELINE_LB (e.g. a build of an earlier commit) on a route without policies
#   - plain:    this tree's lb on the same route
#   - policies: this tree's lb, the route with request_headers (set + add), response_headers
#               (set) = three header edits
#   - jwt:      the route requires a JWT (EdDSA, provider keys from a JWKS file); every request
#               carries the same valid token, so after the first it is a verified-token cache hit
#   - apikey:   the route requires an API key and has a local rate limit keyed on the consumer
#               (a rate no request reaches)
# With --instructions: lb runs under valgrind's callgrind instead, and the figure is
# instructions per request: (Ir after 4000 requests - Ir after 1000) / 3000, which cancels
# start-up and is repeatable whatever else the machine does (CPU time here is noisy).
# Needs loopback ports 19501-19502, nginx and taskset (valgrind for --instructions).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p lb-userspace --bin lb
LB=$PWD/target/release/lb
MODE=cpu
if [ "${1:-}" = --instructions ]; then MODE=instructions; shift; fi
BASE=${1:-}
DIR=$(mktemp -d /tmp/lb-policy-cost.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT

cat > "$DIR/backend.conf" <<CONF
worker_processes 1; daemon off; master_process off; pid $DIR/nginx.pid; error_log $DIR/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19501; location / { return 200 "hello\n"; } } }
CONF
taskset -c 0 nginx -c "$DIR/backend.conf" &

pool='[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:19501"
[[listener]]
name = "l"
address = "127.0.0.1:19502"
[[route]]
listener = "l"
pool = "web"'
printf '%s\n' "$pool" > "$DIR/plain.toml"
printf '%s\n%s\n' "$pool" 'request_headers = { set = { "x-env" = "prod" }, add = { "x-tag" = "a" } }
response_headers = { set = { "strict-transport-security" = "max-age=63072000" } }' > "$DIR/policies.toml"

# A JWKS with the fixture Ed25519 key, and a token signed with it by openssl.
KEYS=$PWD/tests/fixtures/jwt
python3 - "$KEYS/public.json" > "$DIR/jwks.json" <<'PY'
import json, sys
key = json.load(open(sys.argv[1]))["ed1"]; key["kid"] = "ed1"
print(json.dumps({"keys": [key]}))
PY
b64url() { python3 -c 'import base64,sys; print(base64.urlsafe_b64encode(sys.stdin.buffer.read()).rstrip(b"=").decode())'; }
SIGNING_INPUT="$(printf '{"alg":"EdDSA","kid":"ed1","typ":"JWT"}' | b64url).$(printf '{"iss":"bench","sub":"u1","exp":%s}' $(( $(date +%s) + 86400 )) | b64url)"
printf '%s' "$SIGNING_INPUT" > "$DIR/signing-input"
SIGNATURE=$(openssl pkeyutl -sign -inkey "$KEYS/ed1.pem" -rawin -in "$DIR/signing-input" | b64url)
TOKEN="$SIGNING_INPUT.$SIGNATURE"
printf '%s\n%s\n%s\n' "$pool" 'jwt = { provider = "bench" }' "[[jwt_provider]]
name = \"bench\"
issuer = \"bench\"
jwks_file = \"$DIR/jwks.json\"" > "$DIR/jwt.toml"
printf '[[consumer]]\nname = "bench"\nkey = "bench-key"\n' > "$DIR/consumers.toml"
printf '%s\n%s\n%s\n' "$pool" 'api_key = { header = "x-api-key" }
[[route.rate_limit]]
key = "consumer"
rate = "1000000000/s"
burst = 1000000' "[api_keys]
file = \"$DIR/consumers.toml\"" > "$DIR/apikey.toml"
HEADER_jwt="Authorization: Bearer $TOKEN"
HEADER_apikey="X-Api-Key: bench-key"


ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # NAME BINARY CONFIG
    taskset -c 0 "$2" l7 --threads 1 --config "$3" > "$DIR/lb.out" 2>&1 &
    local pid=$!
    until grep -q "listening\|127.0.0.1:19502" "$DIR/lb.out" 2>/dev/null; do
        kill -0 $pid || { cat "$DIR/lb.out"; exit 1; }
        sleep 0.05
    done
    local before; before=$(ticks $pid)
    local header_var="HEADER_$1"
    local json; json=$(taskset -c 1 "$LB" bench --json --threads 1 -c 50 -d 5s --warmup 0s ${!header_var:+-H "${!header_var}"} http://127.0.0.1:19502/small)
    local after; after=$(ticks $pid)
    kill $pid; wait $pid 2>/dev/null || true
    local ok; ok=$(printf '%s' "$json" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["ok"])')
    local hz; hz=$(getconf CLK_TCK)
    python3 -c "ok=$ok; t=($after-$before)/$hz; print(f'$1 {ok/5:.0f} req/s, {t*1e6/ok:.2f} us CPU/req')"
}

# Instructions lb ran for N requests (callgrind total, start-up and shutdown included).
instructions() { # BINARY CONFIG N [HEADER]
    rm -f "$DIR"/cg.out
    valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.out" "$1" l7 --threads 1 --config "$2" > "$DIR/lb.out" 2>&1 &
    local pid=$!
    until grep -q "127.0.0.1:19502" "$DIR/lb.out" 2>/dev/null; do
        kill -0 $pid || { cat "$DIR/lb.out"; exit 1; }
        sleep 0.1
    done
    "$LB" bench --json --threads 1 -c 10 -n "$3" --timeout 60s ${4:+-H "$4"} http://127.0.0.1:19502/small > /dev/null
    kill -INT $pid; wait $pid 2>/dev/null || true
    callgrind_annotate "$DIR/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}

per_request() { # NAME BINARY CONFIG
    local header_var="HEADER_$1"
    local small; small=$(instructions "$2" "$3" 1000 "${!header_var:-}")
    local large; large=$(instructions "$2" "$3" 4000 "${!header_var:-}")
    python3 -c "print(f'$1 {($large - $small) / 3000:.0f} instructions/request')"
}

if [ "$MODE" = instructions ]; then
    if [ -n "$BASE" ]; then per_request base "$BASE" "$DIR/plain.toml"; fi
    per_request plain "$LB" "$DIR/plain.toml"
    per_request policies "$LB" "$DIR/policies.toml"
    per_request jwt "$LB" "$DIR/jwt.toml"
    per_request apikey "$LB" "$DIR/apikey.toml"
    exit 0
fi

for round in 1 2 3; do
    echo "round $round"
    if [ -n "$BASE" ]; then run base "$BASE" "$DIR/plain.toml"; fi
    run plain "$LB" "$DIR/plain.toml"
    run policies "$LB" "$DIR/policies.toml"
    run jwt "$LB" "$DIR/jwt.toml"
    run apikey "$LB" "$DIR/apikey.toml"
done
