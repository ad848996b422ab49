#!/usr/bin/env bash
# Installs everything nodemesh and its tests need on a fresh Debian machine (run as root):
# system packages (nftables, iproute2, curl, wrk, ...) and a Python virtualenv in .venv with
# the pinned dependencies from pyproject.toml. Idempotent: re-running it is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

want_apt=(nftables iproute2 curl wrk tcpdump haproxy procps)
missing=()
for p in "${want_apt[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing system packages (${missing[*]}); run as root to install them" >&2
  fi
fi

extra="${1:-dev}"
stamp=".venv/.installed-${extra}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".[${extra}]"
  touch "$stamp"
fi
