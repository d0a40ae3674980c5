#!/usr/bin/env bash
# Run the fault suite and refresh docs/faults.md (the probe → outcome table; docs/artefacts.md links it).
source "$(dirname "$0")/env.sh"
export DAGSTER_HOME="$(mktemp -d)"
cp dagster.yaml "$DAGSTER_HOME/"
export DYNAMICS_FAULT_TABLE="$ROOT/docs/faults.md"
python -m pytest dynamics_assets_tests/faults dynamics_assets_tests/test_postgres.py dynamics_assets_tests/defs/embed/test_pool_encoder.py -q -p no:warnings "$@"
echo "fault table: $DYNAMICS_FAULT_TABLE"
