#!/usr/bin/env bash
# Sourced by the ensure_*.sh scripts: apt_ensure WHAT PACKAGE... installs Debian packages (sudo when
# not root), printing one line on success and apt's last lines on failure; never fails itself.
apt_ensure() {
  local what="$1"; shift
  local sudo="" log
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log="$(mktemp)"
  echo "installing $* (Debian packages) for $what ..." >&2
  if { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@"; } >"$log" 2>&1; then
    echo "$* installed" >&2
  else
    echo "could not install $* (last lines of apt's log below)" >&2
    tail -n 15 "$log" >&2
  fi
  rm -f "$log"
}
