#!/usr/bin/env bash
# Opens the program reports that `cargo test -p relay --test report` leaves in
# target/tmp/report-check/ in headless Chromium (Debian's package; `make report-check` installs
# it when missing) and checks what a reader would see: no console errors, every chart present
# and drawn, and a screenshot saved beside each report (report.png) to look at.
# Each browser run is bounded by REPORT_CHECK_TIMEOUT seconds (60).
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${CARGO_TARGET_DIR:-target}/tmp/report-check"
limit="${REPORT_CHECK_TIMEOUT:-60}"
browser="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$browser" ]; then
  echo "report-check: needs Chromium (Debian: apt-get install -y chromium; make report-check installs it)" >&2
  exit 1
fi
charts=(chart-trend chart-unserved chart-speed chart-on-scene chart-heat)
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --no-first-run --disable-extensions
  --disable-background-networking --user-data-dir="$profile" --enable-logging=stderr --v=0)

status=0
for name in report report-empty; do
  page="$(realpath "$dir/$name.html")"
  [ -f "$page" ] || { echo "report-check: $page is missing (run cargo test -p relay --test report)" >&2; exit 1; }
  # The DOM after the page ran, with the browser's console on stderr: the page has no script,
  # so any console message (console.error is logged as INFO:CONSOLE) is a fault.
  timeout "$limit" "$browser" "${flags[@]}" --dump-dom "file://$page" >"$dir/$name.dom" 2>"$dir/$name.log" || {
    echo "report-check: chromium failed on $name.html (see $dir/$name.log)" >&2; exit 1; }
  if grep -E ':CONSOLE|Uncaught|Failed to load|Not allowed to load' "$dir/$name.log"; then
    echo "report-check: console errors in $name.html" >&2
    status=1
  fi
  python3 - "$dir/$name.dom" "${charts[@]}" <<'PY' || status=1
import re, sys
dom = open(sys.argv[1], encoding="utf-8").read()
for chart in sys.argv[2:]:
    m = re.search(r'<figure[^>]*id="%s"[^>]*>(.*?)</figure>' % chart, dom, re.S)
    if not m:
        sys.exit(f"report-check: {chart} is missing")
    body = m.group(1)
    shapes = len(re.findall(r"<(rect|polyline|path|line)\b", body))
    texts = len(re.findall(r"<text\b", body))
    if "<svg" not in body or shapes < 3 or texts < 3:
        sys.exit(f"report-check: {chart} is empty ({shapes} shapes, {texts} labels)")
    print(f"  {chart}: {shapes} shapes, {texts} labels")
PY
  timeout "$limit" "$browser" "${flags[@]}" --hide-scrollbars --window-size=1400,3400 \
    --screenshot="$dir/$name.png" "file://$page" >/dev/null 2>>"$dir/$name.log" || {
    echo "report-check: chromium could not take the screenshot of $name.html" >&2; exit 1; }
  [ -s "$dir/$name.png" ] || { echo "report-check: no screenshot of $name.html" >&2; exit 1; }
  echo "report-check: $name.html ok; screenshot $dir/$name.png"
done
exit $status
