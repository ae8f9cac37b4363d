#!/usr/bin/env bash
# Fuzzes intake's EIDO HTTP endpoints (POST /EIDO, GET /EIDO/{IncidentId}) with schemathesis,
# driven by NENA's EIDO schema: starts `relay dev` on a free port base, runs a bounded number
# of generated requests (valid and invalid) against the EIDO port it prints, and fails on any
# 5xx answer, an answer that does not match the documented responses, or relay dev dying.
# Usage: scripts/fuzz-eido.sh path/to/relay path/to/venv/bin/schemathesis
# Bounds: FUZZ_EXAMPLES per operation (default 100), FUZZ_TIMEOUT seconds (default 240);
# running out of time fails, since schemathesis reports its findings at the end.
set -euo pipefail
relay=$1
st=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
examples=${FUZZ_EXAMPLES:-100}
limit=${FUZZ_TIMEOUT:-240}
here=$(cd "$(dirname "$0")/.." && pwd)
shared="$here/../shared/eido/openapi.yaml"
[ -f "$shared" ] || { echo "fuzz-eido: $shared is missing (the shared/ folder beside the repository)" >&2; exit 1; }

work=$(mktemp -d)
pid=
stop() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop EXIT

"$(dirname "$st")/python" "$here/tests/fuzz/eido_openapi.py" "$shared" "$work/eido-openapi.json"

port_free() { ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
log="$work/relay-dev.log"
for _ in 1 2 3 4 5; do
  base=$(( 20000 + RANDOM % 40000 ))
  port_free "$base" && port_free $((base + 1)) && port_free $((base + 2)) && port_free $((base + 3)) || continue
  "$relay" dev --port-base "$base" --data-dir "$work/data" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    if grep -q '^intake EIDO on ' "$log" || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if grep -q '^intake EIDO on ' "$log"; then break; fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
done
if [ -z "$pid" ]; then
  echo "relay dev did not start:" >&2
  cat "$log" >&2
  exit 1
fi
url=$(sed -n 's|^intake EIDO on \(https\{0,1\}://[^/]*\)/EIDO$|\1|p' "$log")
# The EIDO port asks relay dev's TLS and token, as its gRPC port does: the CA and the dev
# token come from the lines relay dev prints (the token is passed in a header, never logged).
ca=$(sed -n 's|^export RELAY_CA_FILE=||p' "$log")
token=$(sed -n 's|^export RELAY_TOKEN=||p' "$log")
secure=()
if [ -n "$ca" ] && [ -n "$token" ]; then
  secure=(--tls-verify "$ca" --header "Authorization: Bearer $token")
fi
echo "fuzzing $url/EIDO with $examples examples per operation, at most ${limit}s"

start=$(date +%s)
status=0
# From the scratch folder, so schemathesis's example database stays out of the repository.
(cd "$work" && timeout "$limit" "$st" run "$work/eido-openapi.json" \
  --url "$url" "${secure[@]}" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance \
  --phases examples,coverage,fuzzing \
  --max-examples "$examples" \
  --seed 16 \
  --no-color) || status=$?
echo "fuzz-eido: $(( $(date +%s) - start ))s"
if ! kill -0 "$pid" 2>/dev/null; then
  echo "fuzz-eido: relay dev died during the run:" >&2
  tail -50 "$log" >&2
  exit 1
fi
if [ "$status" -eq 124 ]; then
  echo "fuzz-eido: schemathesis did not finish within ${limit}s" >&2
fi
exit "$status"
