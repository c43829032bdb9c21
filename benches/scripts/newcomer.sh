#!/usr/bin/env bash
# The newcomer path, timed: a fresh clone -> the .deb -> installed into a throwaway root ->
# `lb run` started as the packaged systemd unit starts it -> a request through it -> stopped.
#
#   benches/scripts/newcomer.sh [REPO]      (default: this checkout; needs root)
#
# The Rust toolchain and Debian packages are the machine's; the clone starts with no
# bpf-linker (dist builds it for the checkout, as `cargo xtask setup` would) and an empty
# target directory.
# No systemd runs here, so the unit's start is reproduced with what it configures: the
# unit's ExecStartPre and ExecStart lines, run as an unprivileged user (nobody) with exactly
# the unit's capability set (ambient + bounding: CAP_BPF CAP_NET_ADMIN CAP_NET_BIND_SERVICE)
# and no_new_privs, and a NOTIFY_SOCKET that receives lb's READY=1 (Type=notify). It runs in
# a network namespace of its own, so the packaged /etc/lb/lb.toml (port 80, backends on
# 127.0.0.1:8001 and :8002) is used unchanged, with two python http.servers as the backends.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=${1:-$PWD}
DIR=$(mktemp -d /tmp/lb-newcomer.XXXXXX)
NS=lb-newcomer-$$
trap 'set +e; kill $(jobs -p) 2>/dev/null; ip netns pids $NS 2>/dev/null | xargs -r kill 2>/dev/null; ip netns del $NS 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
step() { printf '%-58s %7.1f s\n' "$1" "$2"; }

t=$(now)
git clone -q "$REPO" "$DIR/src"
step "git clone" "$(since "$t")"

t=$(now)
(cd "$DIR/src" && cargo xtask dist --out "$DIR/out" >"$DIR/dist.log" 2>&1) ||
    { grep -m5 -B2 -A8 -E "^error|panicked" "$DIR/dist.log" || tail -40 "$DIR/dist.log"; exit 1; }
DEB=$(ls "$DIR"/out/*.deb)
step "cargo xtask dist (bpf-linker, release build: empty target)" "$(since "$t")"

t=$(now)
ROOT=$DIR/root
dpkg-deb -x "$DEB" "$ROOT"
step "installed into a throwaway root (dpkg-deb -x)" "$(since "$t")"

# The unit's own lines, with its paths moved into the throwaway root.
UNIT=$ROOT/lib/systemd/system/lb.service
unit_line() { sed -n "s|^$1=||p" "$UNIT" | sed "s|/usr/bin/lb|$ROOT/usr/bin/lb|; s|/etc/lb/|$ROOT/etc/lb/|"; }
CAPS=$(sed -n 's/^AmbientCapabilities=//p' "$UNIT" | tr 'A-Z' 'a-z' | sed 's/cap_//g; s/ /,+/g; s/^/+/')
[ "$(sed -n 's/^CapabilityBoundingSet=//p' "$UNIT")" = "$(sed -n 's/^AmbientCapabilities=//p' "$UNIT")" ] ||
    { echo "the unit's bounding and ambient sets differ: update this script"; exit 1; }
grep -q '^NoNewPrivileges=yes' "$UNIT"
# What systemd does for the unit's User-less, capability-limited service.
AS_UNIT=(setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs
    --inh-caps="-all,$CAPS" --ambient-caps="-all,$CAPS" --bounding-set="-all,$CAPS")

ip netns add "$NS"
ip -n "$NS" link set lo up
for port in 8001 8002; do
    mkdir -p "$DIR/www$port" && echo "backend $port" >"$DIR/www$port/index.html"
    ip netns exec "$NS" python3 -m http.server -b 127.0.0.1 -d "$DIR/www$port" "$port" \
        >/dev/null 2>&1 &
done
chmod 755 "$DIR"
python3 - "$DIR/notify" >"$DIR/ready" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
import os; os.chmod(sys.argv[1], 0o777)
while True:
    msg = s.recv(4096).decode()
    print(msg.strip(), flush=True)
    if "READY=1" in msg:
        break
PY
while [ ! -S "$DIR/notify" ]; do sleep 0.05; done

t=$(now)
# shellcheck disable=SC2046
ip netns exec "$NS" "${AS_UNIT[@]}" $(unit_line ExecStartPre) >"$DIR/pre.log" 2>&1 ||
    { cat "$DIR/pre.log"; exit 1; }
# shellcheck disable=SC2046
ip netns exec "$NS" env NOTIFY_SOCKET="$DIR/notify" "${AS_UNIT[@]}" $(unit_line ExecStart) \
    >"$DIR/lb.log" 2>&1 &
LB_PID=$!
while ! grep -q 'READY=1' "$DIR/ready"; do
    kill -0 $LB_PID 2>/dev/null || { echo "lb exited before READY=1:"; cat "$DIR/lb.log"; exit 1; }
    sleep 0.05
done
step "ExecStartPre + ExecStart as nobody with the unit's caps -> READY" "$(since "$t")"
sed 's/^/  notify: /' "$DIR/ready"

answer=$(ip netns exec "$NS" curl -s --max-time 5 http://127.0.0.1/)
[ "${answer#backend}" != "$answer" ] || { echo "no backend answer: $answer"; cat "$DIR/lb.log"; exit 1; }
echo "  curl http://127.0.0.1/ (port 80, bound as nobody): $answer"
status=$(ip netns exec "$NS" curl -s http://127.0.0.1:9900/api/status |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print(", ".join(b["address"]+" "+b["health"] for p in s["pools"] for b in p["backends"]))')
echo "  status: $status"

t=$(now)
kill -TERM $LB_PID
wait $LB_PID && code=0 || code=$?
step "SIGTERM (the unit's KillSignal) -> exit $code" "$(since "$t")"
[ "$code" = 0 ]
