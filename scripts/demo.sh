#!/usr/bin/env bash
# make demo: relay dev on embedded storage, the directory loaded from ../shared/hsds and a
# generated metro directory, then a few hours of simulated calls, ending with the simulator's
# report (target/demo/simulation.txt) and the program report of those calls
# (target/demo/report.html).
# Needs no server. RELAY_DEMO_PORT_BASE (50051), RELAY_DEMO_MINUTES (240 simulated minutes)
# and RELAY_DEMO_SPEED (120 simulated seconds per second) change the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

base="${RELAY_DEMO_PORT_BASE:-50051}"
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

echo "== starting relay dev"
"$relay" dev --port-base "$base" --data-dir "$data" > "$data/dev.log" 2>&1 &
dev=$!
trap 'kill -INT "$dev" 2>/dev/null || true; wait "$dev" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  [ "$(grep -c ' listening on ' "$data/dev.log" 2>/dev/null || true)" -ge 4 ] && break
  kill -0 "$dev" 2>/dev/null || { cat "$data/dev.log"; exit 1; }
  sleep 0.2
done
grep ' listening on ' "$data/dev.log"

echo "== simulating $minutes minutes at ${speed}x"
# The simulator's calls carry wall-clock received_at, so the program report covers from now.
start="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
"$relay" simulate \
  --intake "http://127.0.0.1:$base" \
  --availability "http://127.0.0.1:$((base + 1))" \
  --directory "http://127.0.0.1:$((base + 3))" \
  --minutes "$minutes" --speed "$speed" | tee "$data/simulation.txt"

echo "== program report of the simulated calls (docs/program-metrics.md)"
"$relay" report --from "$start" --to "$(date -u -d '+1 minute' +%Y-%m-%dT%H:%M:%SZ)" \
  --database-url "sqlite://$data/intake.db" --out "$data/report.html"
echo "simulator's report: $data/simulation.txt"
echo "program report:     $(realpath "$data/report.html") (open it in a browser)"
echo "(the program report's times are wall-clock: the simulation ran ${speed}x faster than real time)"
