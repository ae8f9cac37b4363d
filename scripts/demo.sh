#!/usr/bin/env bash
# make demo: relay dev on embedded storage, the directory loaded from ../shared/hsds and a
# generated metro directory, then a few hours of simulated calls, ending with the simulator's
# report (target/demo/simulation.txt) and the program report of those calls
# (target/demo/report.html).
# Needs no server. RELAY_DEMO_PORT_BASE (29051: below Linux's ephemeral port range,
# 32768-60999, so no outgoing connection can hold a demo port), RELAY_DEMO_MINUTES (240
# simulated minutes) and RELAY_DEMO_SPEED (120 simulated seconds per second) change the
# defaults.
#
# Every service runs on the simulation's clock (relay dev --clock-speed/--clock-origin, and
# the same origin and speed for relay simulate), so queue escalation, review waits, stale
# positions and shift ends follow simulated time, as a real program would see them.
set -euo pipefail
cd "$(dirname "$0")/.."

base="${RELAY_DEMO_PORT_BASE:-29051}"
minutes="${RELAY_DEMO_MINUTES:-240}"
speed="${RELAY_DEMO_SPEED:-120}"
data=target/demo
relay=target/debug/relay

cargo build --quiet --bin relay
rm -rf "$data"
mkdir -p "$data"

if [ -d ../shared/hsds ]; then
  echo "== importing the HSDS 3.0 examples from ../shared/hsds"
  "$relay" directory import ../shared/hsds --database-url "sqlite://$data/directory.db" | tail -1
else
  echo "(../shared/hsds not found: skipping the HSDS examples)"
fi
echo "== generating and importing a metro directory"
"$relay" directory generate "$data/metro" --services 2000 --seed 1
"$relay" directory import "$data/metro" --database-url "sqlite://$data/directory.db" \
  --time-zone America/Los_Angeles | tail -1

# Simulated time starts now and runs $speed times as fast.
origin="$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)"
echo "== starting relay dev (clock: ${speed}x from $origin)"
"$relay" dev --port-base "$base" --data-dir "$data" \
  --clock-speed "$speed" --clock-origin "$origin" > "$data/dev.log" 2>&1 &
dev=$!
trap 'kill -INT "$dev" 2>/dev/null || true; wait "$dev" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  [ "$(grep -c ' listening on ' "$data/dev.log" 2>/dev/null || true)" -ge 4 ] && break
  kill -0 "$dev" 2>/dev/null || { cat "$data/dev.log"; exit 1; }
  sleep 0.2
done
grep ' listening on ' "$data/dev.log"
# Over TLS with the token relay dev printed (export RELAY_CA_FILE=..., export RELAY_TOKEN=...).
eval "$(grep '^export RELAY_\(CA_FILE\|TOKEN\)=' "$data/dev.log")"
echo "CA: $RELAY_CA_FILE (a token for other clients: $data/dev-token)"

echo "== simulating $minutes minutes at ${speed}x"
# The simulator stamps calls in the deployment's simulated time (same origin and speed).
"$relay" simulate --clock-origin "$origin" \
  --intake "https://127.0.0.1:$base" \
  --availability "https://127.0.0.1:$((base + 1))" \
  --directory "https://127.0.0.1:$((base + 3))" \
  --minutes "$minutes" --speed "$speed" | tee "$data/simulation.txt"

echo "== program report of the simulated calls (docs/program-metrics.md)"
# From the origin to the simulated now (origin + speed x wall time since), plus a minute.
origin_s="$(date -u -d "$origin" +%s)"
to_s="$(awk -v o="$origin_s" -v n="$(date -u +%s)" -v s="$speed" 'BEGIN { printf "%d", o + s * (n - o + 1) + 60 }')"
"$relay" report --from "$(date -u -d "@$origin_s" +%Y-%m-%dT%H:%M:%SZ)" \
  --to "$(date -u -d "@$to_s" +%Y-%m-%dT%H:%M:%SZ)" \
  --database-url "sqlite://$data/intake.db" --out "$data/report.html"
echo "simulator's report: $data/simulation.txt"
echo "program report:     $(realpath "$data/report.html") (open it in a browser)"
echo "(times in both reports are simulated: the clock ran ${speed}x faster than real time from $origin)"
