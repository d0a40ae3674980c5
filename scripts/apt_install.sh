#!/usr/bin/env bash
# Install Debian packages without prompts (as root, or through sudo): `bash scripts/apt_install.sh PKG...`.
# The install_*.sh scripts call it once their own "already there?" check has failed.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
