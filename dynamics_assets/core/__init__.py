"""Pure core library of dynamics_assets: no dagster import anywhere below this package.

Readers, embedding, clustering, statistics, samplers and training run on any box with
torch / faiss / duckdb / pyarrow — a GPU machine without dagster included.
"""
