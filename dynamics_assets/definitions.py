"""Dagster code location: every asset, resource and job of the pipeline."""
from __future__ import annotations

import dagster as dg

from dynamics_assets.defs import checks
from dynamics_assets.defs.cluster import assets as clustering
from dynamics_assets.defs.embed import assets as embeddings
from dynamics_assets.defs.evaluate import assets as evaluation
from dynamics_assets.defs.ingest import assets as raw_data
from dynamics_assets.defs.sample import assets as sampling
from dynamics_assets.defs.train import assets as training
from dynamics_assets.defs.schedules import schedules
from dynamics_assets.defs.sensors import sensors
from dynamics_assets.defs.jobs import jobs
from dynamics_assets.defs.resources import default_resources

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([raw_data, embeddings, clustering, sampling, training, evaluation]),
    asset_checks=checks.asset_checks,
    resources=default_resources(),
    jobs=jobs,
    schedules=schedules,
    sensors=sensors,
)
