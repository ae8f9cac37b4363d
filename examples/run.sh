#!/usr/bin/env bash
# Starts `relay dev` on a free port base, runs each example command against its services
# (RELAY_INTAKE_ADDR, RELAY_AVAILABILITY_ADDR, RELAY_ROUTING_ADDR, with the CA and token
# relay dev prints: RELAY_CA_FILE, RELAY_TOKEN; RELAY_BIN and RELAY_SIGNING_KEY for
# `relay token issue`), stops relay dev, and fails when any example failed. Each caller's
# rate limit is 20 requests per second (burst 40), so an example can exceed it with a
# narrower token (the dev token has the service class, which that does not limit).
# Usage: examples/run.sh path/to/relay "command 1" "command 2" ...
set -euo pipefail
relay=$1
shift

port_free() { ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

log=$(mktemp)
data=$(mktemp -d)
pid=
stop() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -f "$log"
  rm -rf "$data"
}
trap stop EXIT

# relay dev prints one line per service once all four listen; a taken port makes it exit.
for _ in 1 2 3 4 5; do
  base=$(( 20000 + RANDOM % 40000 ))
  port_free "$base" && port_free $((base + 1)) && port_free $((base + 2)) && port_free $((base + 3)) || continue
  "$relay" dev --port-base "$base" --data-dir "$data" --rate-limit 20 >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    if [ "$(grep -c ' listening on ' "$log")" -ge 4 ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if [ "$(grep -c ' listening on ' "$log")" -ge 4 ]; then break; fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
done
if [ -z "$pid" ]; then
  echo "relay dev did not start:" >&2
  cat "$log" >&2
  exit 1
fi
echo "relay dev on 127.0.0.1:$base..$((base + 3))"

export RELAY_INTAKE_ADDR="127.0.0.1:$base"
export RELAY_AVAILABILITY_ADDR="127.0.0.1:$((base + 1))"
export RELAY_ROUTING_ADDR="127.0.0.1:$((base + 2))"
# Narrower tokens (a scope, a CAD, a team) come from `relay token issue` with the dev key.
RELAY_BIN=$(cd "$(dirname "$relay")" && pwd)/$(basename "$relay")
export RELAY_BIN
export RELAY_SIGNING_KEY="$data/signing-key.pem"
# TLS and a token: relay dev prints `export RELAY_CA_FILE=...` and `export RELAY_TOKEN=...`.
eval "$(grep '^export RELAY_\(CA_FILE\|TOKEN\)=' "$log")"
[ -n "${RELAY_CA_FILE:-}" ] && [ -n "${RELAY_TOKEN:-}" ] || { echo "relay dev printed no CA or token:" >&2; cat "$log" >&2; exit 1; }
passed=0
failed=0
for example in "$@"; do
  echo "--- $example"
  if bash -c "$example"; then
    passed=$((passed + 1))
  else
    echo "FAILED (exit $?): $example" >&2
    failed=$((failed + 1))
  fi
done
echo "examples: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
