#!/usr/bin/env bash
# Debian's PostgreSQL server binaries for the Postgres instance test (dynamics_assets_tests/
# test_postgres.py starts its own throwaway server with initdb/pg_ctl; no service is enabled).
# Idempotent: a no-op once initdb is found on PATH or under /usr/lib/postgresql/*/bin.
set -euo pipefail
command -v initdb >/dev/null 2>&1 && exit 0
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && exit 0
bash "$(dirname "$0")/apt_install.sh" postgresql
echo "install_postgres: $(ls -d /usr/lib/postgresql/*/bin/initdb)"
