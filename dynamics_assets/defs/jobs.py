"""Jobs: curate the pool (raw data → clusters → statistics), then draw each epoch's plan."""
from __future__ import annotations

import dagster as dg


CURATION_GROUPS = ("raw_data", "embeddings", "clustering")

curate_pool_job = dg.define_asset_job(
    "curate_pool", selection=dg.AssetSelection.groups(*CURATION_GROUPS),
    description="Raw shards → manifest → reference model → embeddings → clusters → statistics.")

epoch_plan_job = dg.define_asset_job(
    "draw_epoch_plan", selection=dg.AssetSelection.groups("sampling"),
    description="One recipe's sample plan for one epoch (partition recipe × epoch).")

train_epoch_job = dg.define_asset_job(
    "train_epoch", selection=dg.AssetSelection.assets("sample_plan", "checkpoint", "eval_report"),
    description="One recipe × epoch: its plan, the checkpoint trained on it (from the recipe's previous "
                "epoch), its eval report.")

report_job = dg.define_asset_job(
    "report_recipes", selection=dg.AssetSelection.assets("learning_curve", "comparison_report"),
    description="Learning curves and the side-by-side comparison of every evaluated recipe.")

jobs = [curate_pool_job, epoch_plan_job, train_epoch_job, report_job]
