#!/usr/bin/env bash
# Create .venv with the locked dependencies (idempotent: a no-op once the lock is installed).
# Uses uv from PyPI; ignores the machine's pip find-links folder (its CPU-only torch build
# breaks torchvision, see README "Install").
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS=
export UV_INDEX_URL="${UV_INDEX_URL:-https://pypi.org/simple}"
stamp=.venv/.lock-installed
want="$(cat requirements.lock pyproject.toml)"  # the project itself (its console scripts) is installed too
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check uv
fi
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || uv venv --quiet --python "$PY" .venv
uv pip sync --quiet --python .venv/bin/python requirements.lock
uv pip install --quiet --python .venv/bin/python --no-deps -e .
printf '%s' "$want" > "$stamp"
echo "bootstrap: .venv ready ($(.venv/bin/python -c 'import torch,open_clip,faiss,dagster; print("torch", torch.__version__, "open_clip", open_clip.__version__, "faiss", faiss.__version__, "dagster", dagster.__version__)'))"
