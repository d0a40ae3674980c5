"""Jobs: curate the pool (raw data → clusters → statistics), ingest a landed shard, re-curate,
draw each epoch's plan, train, report."""
from __future__ import annotations

import dagster as dg

CURATION_GROUPS = ("ingest", "embed", "cluster")
_PER_SHARD = dg.AssetSelection.assets("shard_embeddings")

curate_pool_job = dg.define_asset_job(
    "curate_pool", selection=dg.AssetSelection.groups(*CURATION_GROUPS) - _PER_SHARD,
    description="Raw shards → manifest → reference model → embeddings → clusters → statistics.")

ingest_shard_job = dg.define_asset_job(
    "ingest_shard", selection=_PER_SHARD,
    description="One landed shard (partition raw_shard): checked complete, manifested into the pool, "
                "embedded alone with the pool's encoder.")

recurate_pool_job = dg.define_asset_job(
    "recurate_pool",
    selection=dg.AssetSelection.groups(*CURATION_GROUPS) - _PER_SHARD
    - dg.AssetSelection.assets("reference_model", "curated_model"),
    description="Re-curation on the grown pool with the same encoders (neither the reference model nor the "
                "curated model is re-trained): manifest, embeddings of shards not yet embedded, DFN scores and "
                "curation targets of the grown pool, clusters refreshed (centroids kept "
                "unless the new data drifts), statistics. The coming epochs' plans follow "
                "(sensor replan_after_recuration).")

epoch_plan_job = dg.define_asset_job(
    "draw_epoch_plan", selection=dg.AssetSelection.groups("sample"),
    description="One recipe's sample plan for one epoch (partition recipe × epoch).")

train_epoch_job = dg.define_asset_job(
    "train_epoch", selection=dg.AssetSelection.assets("sample_plan", "datacomp_subset", "webdataset_export",
                                                      "checkpoint", "feedback_plan", "eval_report"),
    description="One recipe × epoch: its plan, its exports (DataComp subset file, webdataset shards for "
                "open_clip_train), the checkpoint trained on it (from the recipe's previous epoch; a feedback "
                "recipe's plan, feedback_plan, is drawn by the same step), its eval report.")

plan_epoch_job = dg.define_asset_job(
    "plan_epoch", selection=dg.AssetSelection.assets("sample_plan", "datacomp_subset", "laion_metadata"),
    description="One recipe × epoch of a pool that ships embeddings without images: its plan, its "
                "DataComp subset file and its metadata parquet for img2dataset (nothing to train on).")

report_job = dg.define_asset_job(
    "report_recipes", selection=dg.AssetSelection.assets("learning_curve", "comparison_report"),
    description="Learning curves and the side-by-side comparison of every evaluated recipe.")

compare_job = dg.define_asset_job(
    "compare", selection=dg.AssetSelection.assets("comparison_design"),
    description="The comparison design (data/design.yaml): recipes × seeds with controls, the pool gate and "
                "matched compute; resumes from the runs on disk (also: `dynamics compare`).")

jobs = [compare_job, curate_pool_job, ingest_shard_job, recurate_pool_job, epoch_plan_job, train_epoch_job, plan_epoch_job,
        report_job]
