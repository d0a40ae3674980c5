"""Jobs: curate the pool (raw data → clusters → statistics), then draw each epoch's plan."""
from __future__ import annotations

import dagster as dg


CURATION_GROUPS = ("raw_data", "embeddings", "clustering")

curate_pool_job = dg.define_asset_job(
    "curate_pool", selection=dg.AssetSelection.groups(*CURATION_GROUPS),
    description="Raw shards → manifest → reference model → embeddings → clusters → statistics.")

epoch_plan_job = dg.define_asset_job(
    "draw_epoch_plan", selection=dg.AssetSelection.groups("sampling"),
    description="One epoch's sample plan (run once per epoch partition).")

jobs = [curate_pool_job, epoch_plan_job]
