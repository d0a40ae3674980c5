"""Shared fixtures: tiny run configs and resources on a temporary data root."""
from __future__ import annotations

import pytest

from dynamics_assets.defs.resources import GpuResource, StorageResource

TINY_RUN_CONFIG = {
    "ops": {
        "raw_shards": {"config": {"pairs": 480, "samples_per_shard": 160, "eval_per_concept": 1, "seed": 3}},
        "reference_model": {"config": {"epochs": 1, "batch_size": 64}},
        "pair_embeddings": {"config": {"batch_size": 128}},
        "clusters": {"config": {"k": 8, "sample_size": 400, "niter": 5, "merge_threshold": 0.95}},
    }
}


@pytest.fixture
def resources(tmp_path):
    return {"storage": StorageResource(root=str(tmp_path / "data")), "gpu": GpuResource(device="cpu")}
