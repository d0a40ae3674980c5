# Sourced by the scripts: bootstrap .venv and point Dagster at the project's instance.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
export DYNAMICS_DATA_DIR="${DYNAMICS_DATA_DIR:-$ROOT/data}"
export DAGSTER_HOME="${DAGSTER_HOME:-$DYNAMICS_DATA_DIR/dagster_home}"
mkdir -p "$DAGSTER_HOME"
cfg="${DAGSTER_YAML:-dagster.yaml}"  # deploy/dagster.postgres.yaml for a Postgres instance
cmp -s "$cfg" "$DAGSTER_HOME/dagster.yaml" || cp "$cfg" "$DAGSTER_HOME/dagster.yaml"
export PATH="$ROOT/.venv/bin:$PATH"
