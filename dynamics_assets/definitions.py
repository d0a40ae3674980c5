"""Dagster code location: every asset, resource and job of the pipeline."""
from __future__ import annotations

import dagster as dg

from .defs import clustering, embeddings, raw_data, sampling
from .defs.jobs import jobs
from .defs.resources import default_resources

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([raw_data, embeddings, clustering, sampling]),
    resources=default_resources(),
    jobs=jobs,
)
