#!/usr/bin/env bash
# The search's several-workers test (tests/test_tune_postgres.py) starts a throw-away server from
# Debian's PostgreSQL package. Install it when missing; if that fails, carry on: the test then skips
# and says why.
set -uo pipefail
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
log="$(mktemp)"
echo "installing postgresql (Debian package) for the several-workers search test ..." >&2
if { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q postgresql; } >"$log" 2>&1; then
  echo "postgresql installed" >&2
else
  echo "could not install postgresql (last lines of apt's log below); its test will skip" >&2
  tail -n 15 "$log" >&2
fi
rm -f "$log"
exit 0
