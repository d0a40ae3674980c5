"""Dagster code location: every asset, resource and job of the pipeline."""
from __future__ import annotations

import dagster as dg

from .defs import checks, clustering, embeddings, evaluation, raw_data, sampling, training
from .defs.schedules import schedules
from .defs.sensors import sensors
from .defs.jobs import jobs
from .defs.resources import default_resources

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([raw_data, embeddings, clustering, sampling, training, evaluation]),
    asset_checks=checks.asset_checks,
    resources=default_resources(),
    jobs=jobs,
    schedules=schedules,
    sensors=sensors,
)
