"""Jobs: curate the pool (raw data → clusters → statistics), then draw each epoch's plan."""
from __future__ import annotations

import dagster as dg


CURATION_GROUPS = ("raw_data", "embeddings", "clustering")

curate_pool_job = dg.define_asset_job(
    "curate_pool", selection=dg.AssetSelection.groups(*CURATION_GROUPS),
    description="Raw shards → manifest → reference model → embeddings → clusters → statistics.")

epoch_plan_job = dg.define_asset_job(
    "draw_epoch_plan", selection=dg.AssetSelection.groups("sampling"),
    description="One epoch's sample plan only (run once per epoch partition).")

train_epoch_job = dg.define_asset_job(
    "train_epoch", selection=dg.AssetSelection.assets("sample_plan", "checkpoint", "eval_report"),
    description="One epoch: its plan, the checkpoint trained on it (from the previous epoch's), its eval report.")

learning_curve_job = dg.define_asset_job(
    "report_learning_curve", selection=dg.AssetSelection.assets("learning_curve"),
    description="The learning curve across every evaluated epoch.")

jobs = [curate_pool_job, epoch_plan_job, train_epoch_job, learning_curve_job]
