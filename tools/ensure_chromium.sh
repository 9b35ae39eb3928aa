#!/usr/bin/env bash
# The browser test (tests/test_browser.py) drives Debian's own Chromium through Playwright, never a
# downloaded build. Install it when missing; if that fails, carry on: the browser test then fails
# and says what is missing.
set -uo pipefail
if [ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
source "$(dirname "$0")/apt_ensure.sh"
apt_ensure "the browser test" chromium chromium-driver
exit 0
