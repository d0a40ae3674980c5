#!/usr/bin/env bash
# The Dagster UI (webserver + daemon) on http://127.0.0.1:3000 over the persistent instance.
source "$(dirname "$0")/env.sh"
exec dagster dev -h 127.0.0.1 -p "${PORT:-3000}" -w workspace.yaml
