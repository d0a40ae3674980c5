"""The Dagster layer: thin assets, checks and sensors over ``dynamics_assets.core``, by stage.

One folder per stage, named like the core's stage and like its asset group:
  ingest/    raw_shards, raw_pairs                              assets.py, sensors.py, schedules.py
  embed/     reference_model, curated_model, pair_embeddings,
             shard_embeddings, dfn_scores, curation_targets     assets.py, checks.py
  cluster/   clusters, cluster_stats                            assets.py, checks.py
  sample/    sample_plan (per recipe × epoch)                   assets.py, checks.py, sensors.py
  export/    webdataset_export, datacomp_subset, laion_metadata assets.py
  train/     checkpoint, feedback_plan (per recipe × epoch)     assets.py, checks.py
  evaluate/  eval_report, learning_curve, comparison_report     assets.py, checks.py
             comparison_design (the controlled design)          design.py
Shared by the stages: jobs.py (the jobs), partitions.py (recipe × epoch), experiments.py (recipes
as data), config.py (run config from the core's settings), resources.py, tracking.py (MLflow),
metadata.py (Dagster metadata from core results), recuration.py (what re-curation reads from the
instance). ``dynamics_assets/definitions.py`` assembles them into the code location.
"""
