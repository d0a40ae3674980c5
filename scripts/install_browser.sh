#!/usr/bin/env bash
# Debian's Chromium for the e2e UI test (Playwright drives /usr/bin/chromium; no browser is ever
# downloaded by Playwright). Idempotent: a no-op once /usr/bin/chromium exists.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
bash "$(dirname "$0")/apt_install.sh" chromium
echo "install_browser: $(/usr/bin/chromium --version 2>/dev/null)"
