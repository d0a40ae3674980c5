"""``python -m dynamics_assets.core.ingest.synthetic --out DIR [--pairs N --seed S --profile web ...]``."""
from dynamics_assets.core.ingest.synthetic.write import _main

_main()
