"""The Dagster layer: thin assets, resources, partitions and jobs over ``dynamics_assets.core``.

One module per concern and one asset group per stage:
  raw_data    (raw_shards, raw_pairs)            — raw_data.py
  embeddings  (reference_model, pair_embeddings)  — embeddings.py
  clustering  (clusters, cluster_stats)           — clustering.py
  sampling    (sample_plan, per epoch)            — sampling.py
  training    (checkpoint, per epoch)             — training.py
  evaluation  (eval_report per epoch, learning_curve) — evaluation.py
"""
