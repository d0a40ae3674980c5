#!/usr/bin/env bash
# The main job: every asset on the embedded default data, in the local Dagster instance.
source "$(dirname "$0")/env.sh"
exec python -m dynamics_assets.pipeline "$@"
