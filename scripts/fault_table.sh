#!/usr/bin/env bash
# Run the fault suite and refresh docs/faults.md (the probe → outcome table the README shows).
source "$(dirname "$0")/env.sh"
export DAGSTER_HOME="$(mktemp -d)"
cp dagster.yaml "$DAGSTER_HOME/"
export DYNAMICS_FAULT_TABLE="$ROOT/docs/faults.md"
python -m pytest dynamics_assets_tests/faults dynamics_assets_tests/test_postgres.py dynamics_assets_tests/test_pool_encoder.py -q -p no:warnings "$@"
python - "$DYNAMICS_FAULT_TABLE" README.md <<'PY'
import sys
from pathlib import Path
table, readme = Path(sys.argv[1]).read_text().strip(), Path(sys.argv[2])
text = readme.read_text()
head, rest = text.split("<!-- faults:start -->", 1)
_, tail = rest.split("<!-- faults:end -->", 1)
rows = table.count("\n| ")
block = f"<details><summary>{rows} probes</summary>\n\n{table}\n\n</details>\n"
readme.write_text(f"{head}<!-- faults:start -->\n{block}<!-- faults:end -->{tail}")
PY
echo "fault table: $DYNAMICS_FAULT_TABLE (and README.md)"
