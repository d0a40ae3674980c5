#!/usr/bin/env bash
# Debian's Chromium for the e2e UI test (Playwright drives /usr/bin/chromium; no browser is ever
# downloaded by Playwright). Idempotent: a no-op once /usr/bin/chromium exists.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "install_browser: $(/usr/bin/chromium --version 2>/dev/null)"
