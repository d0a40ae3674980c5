#!/usr/bin/env bash
# The tests (bootstraps .venv first). Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
bash scripts/install_browser.sh  # Debian's chromium for the UI test (no-op when present)
bash scripts/install_postgres.sh  # Debian's PostgreSQL for test_postgres.py (no-op when present)
bash scripts/install_fashion_mnist.sh  # Debian's Fashion-MNIST for the labelled-evaluation test (no-op when present)
export DAGSTER_HOME="$(mktemp -d)"  # tests use ephemeral instances; never the project's own
cp dagster.yaml "$DAGSTER_HOME/"
# two worker processes (pytest-xdist), one per core of the 2-core reference box; a file's tests stay on one
# worker (--dist loadfile) so its module fixtures are built once. `-n 0` (or any -n) after this overrides it.
exec python -m pytest -n 2 --dist loadfile "$@"
