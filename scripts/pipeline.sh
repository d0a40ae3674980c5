#!/usr/bin/env bash
# Bootstrap .venv, then `dynamics run`: the main job, every asset on the embedded default data (or
# --source …), in the local Dagster instance. Arguments go to it unchanged (`dynamics run --help`).
source "$(dirname "$0")/env.sh"
exec dynamics run "$@"
