"""The Dagster code location: every stage's assets, checks and sensors, the jobs and resources.

Each stage folder under ``defs/`` (ingest, embed, cluster, sample, export, train, evaluate) holds that
stage's assets, checks and sensors side by side; heavy libraries (torch, open_clip, faiss, duckdb,
mlflow) are imported inside asset bodies, so loading this module stays fast.
"""
from __future__ import annotations

import dagster as dg

from dynamics_assets.defs.cluster import assets as cluster_assets, checks as cluster_checks
from dynamics_assets.defs.embed import assets as embed_assets, checks as embed_checks
from dynamics_assets.defs.evaluate import assets as evaluate_assets, checks as evaluate_checks, design as evaluate_design
from dynamics_assets.defs.export import assets as export_assets
from dynamics_assets.defs.ingest import assets as ingest_assets, schedules as ingest_schedules, sensors as ingest_sensors
from dynamics_assets.defs.jobs import jobs
from dynamics_assets.defs.resources import default_resources
from dynamics_assets.defs.sample import assets as sample_assets, checks as sample_checks, sensors as sample_sensors
from dynamics_assets.defs.train import assets as train_assets, checks as train_checks

STAGES = (ingest_assets, embed_assets, cluster_assets, sample_assets, export_assets, train_assets, evaluate_assets,
          evaluate_design)
CHECKS = (embed_checks, cluster_checks, sample_checks, train_checks, evaluate_checks)

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(STAGES),
    asset_checks=dg.load_asset_checks_from_modules(CHECKS),
    resources=default_resources(),
    jobs=jobs,
    schedules=[ingest_schedules.nightly_recuration],
    sensors=[ingest_sensors.raw_shard_sensor, sample_sensors.replan_after_recuration],
)
