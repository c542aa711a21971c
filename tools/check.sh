#!/usr/bin/env bash
# Set up and run every check: lint, types and the whole test suite.
# Usage: bash tools/check.sh [pytest arguments]
# (With arguments, pytest runs with them alone: `bash tools/check.sh tests/server -x`.)
# As root (or with sudo) it first installs the Debian packages the tests use: Xvfb, xdotool
# and x11-utils for the real-window GUI tests, iproute2 for the network-namespace tests,
# redis-server for the cluster tests (each starts its own instance; the service is not used).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v Xvfb >/dev/null || need+=(xvfb)
command -v xdotool >/dev/null || need+=(xdotool)
command -v xprop >/dev/null || need+=(x11-utils)  # xprop, xwininfo: the urgency hint test
command -v ip >/dev/null || need+=(iproute2)
command -v dig >/dev/null || need+=(dnsutils)
command -v openssl >/dev/null || need+=(openssl)  # s_client probes the TLS policy
command -v redis-server >/dev/null || need+=(redis-server)  # the cluster tests' private Redis
python3 -c 'import tkinter' 2>/dev/null || need+=(python3-tk)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing Debian packages: ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi

# The whole suite. The mDNS tests (network namespaces, as root) spend most of their two and a
# half minutes waiting on the network, so they run beside the rest; their report follows.
mdns=tests/discovery/test_mdns_netns.py
report=$(mktemp)
# (A background job ignores Ctrl-C unless told otherwise: this one takes it as the other
# pytest does, tears its namespaces down and ends.)
( trap - INT; exec .venv/bin/python -m pytest -p no:cacheprovider "$mdns" >"$report" 2>&1 ) &
beside=$!
trap 'wait "$beside" 2>/dev/null || true; rm -f "$report"' EXIT
status=0
.venv/bin/python -m pytest --ignore="$mdns" || status=$?
mdns_status=0
wait "$beside" || mdns_status=$?
echo "--- $mdns (run beside the rest) ---"
cat "$report"
if [ "$status" -eq 0 ]; then status=$mdns_status; fi
exit "$status"
