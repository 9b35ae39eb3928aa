#!/usr/bin/env bash
# The browser test (tests/test_browser.py) drives Debian's own Chromium through Playwright, never a
# downloaded build. Install it when missing; if that fails, carry on: the browser test then fails
# and says what is missing.
set -uo pipefail
if [ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
log="$(mktemp)"
echo "installing chromium and chromium-driver (Debian packages) for the browser test ..." >&2
if { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver; } >"$log" 2>&1; then
  echo "$(/usr/bin/chromium --version 2>/dev/null || echo chromium installed)" >&2
else
  echo "could not install chromium (last lines of apt's log below); the browser test will fail" >&2
  tail -n 15 "$log" >&2
fi
rm -f "$log"
exit 0
