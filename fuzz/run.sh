#!/usr/bin/env bash
# Runs each fuzz target for SECONDS seconds (libFuzzer's -max_total_time, one process, one
# core), from the committed seeds (corpus/<target>, read only) plus the corpus grown by earlier
# local runs (target/corpus/<target>, not committed). Prints executions and crashes per target
# and exits 1 when any target crashed; a crashing input is left in artifacts/<target>/.
#   usage: fuzz/run.sh SECONDS TARGET...
set -uo pipefail
seconds=$1
shift
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1 CARGO_INCREMENTAL=0
failed=0
printf '%-12s %12s %8s %8s  %s\n' target executions exec/s crashes result
for target in "$@"; do
  mkdir -p "target/corpus/$target" "artifacts/$target"
  log="target/fuzz-$target.log"
  before=$(find "artifacts/$target" -type f | wc -l)
  touch "$log.start"
  # The run is bounded twice: libFuzzer stops itself after SECONDS, timeout kills it after
  # SECONDS + 60 (a hung input is also a failure: -timeout=10 reports it as a crash).
  timeout --kill-after=10 $((seconds + 60)) cargo fuzz run --sanitizer none "$target" \
    "target/corpus/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  crashes=$(($(find "artifacts/$target" -type f | wc -l) - before))
  result=ok
  if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
    result="FAILED (exit $rc; log fuzz/$log)"
    failed=1
    grep -m1 -E "panicked at|ERROR: libFuzzer" "$log" | sed 's/^/    /'
    find "artifacts/$target" -type f -newer "$log.start" 2>/dev/null | sed 's/^/    input: fuzz\//'
  fi
  printf '%-12s %12s %8s %8s  %s\n' "$target" "${runs:-?}" "${rate:-?}" "$crashes" "$result"
done
exit "$failed"
