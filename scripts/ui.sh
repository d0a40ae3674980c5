#!/usr/bin/env bash
# Bootstrap .venv, then `dynamics ui`: the Dagster UI (webserver + daemon) on http://127.0.0.1:3000
# over the persistent instance (--port N or $PORT for another port; `dynamics ui --help`).
source "$(dirname "$0")/env.sh"
exec dynamics ui "$@"
