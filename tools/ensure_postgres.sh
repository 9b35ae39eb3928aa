#!/usr/bin/env bash
# The search's several-workers test (tests/test_tune_postgres.py) starts a throw-away server from
# Debian's PostgreSQL package. Install it when missing; if that fails, carry on: the test then skips
# and says why.
set -uo pipefail
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
source "$(dirname "$0")/apt_ensure.sh"
apt_ensure "the several-workers search test" postgresql
exit 0
