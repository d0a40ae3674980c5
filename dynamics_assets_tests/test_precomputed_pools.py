"""Pools that ship their embeddings (DataComp CommonPool and LAION / clip-retrieval layouts) run
through the Dagster lineage: manifest + embeddings, clusters, statistics, plans — without images."""
from __future__ import annotations

import dagster as dg
import numpy as np
import pytest

from dynamics_assets.core.ingest.minipools import write_datacomp_pool, write_laion_pool
from dynamics_assets.defs.cluster import assets as clustering
from dynamics_assets.defs.embed import assets as embeddings
from dynamics_assets.defs.ingest import assets as raw_data
from dynamics_assets.defs.resources import GpuResource, StorageResource
from dynamics_assets.defs.export.assets import datacomp_subset
from dynamics_assets.defs.sample.assets import sample_plan

SPINE = [raw_data.raw_shards, raw_data.raw_pairs, embeddings.reference_model, embeddings.pair_embeddings,
         clustering.clusters, clustering.cluster_stats]


@pytest.mark.parametrize("layout", ["datacomp", "laion"])
def test_a_pool_of_embeddings_is_curated_and_planned(tmp_path, layout):
    pool = (write_datacomp_pool if layout == "datacomp" else write_laion_pool)(tmp_path / "pool")
    resources = {"storage": StorageResource(root=str(tmp_path / "data")), "gpu": GpuResource(device="cpu"),
                 "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io"))}
    config = {"ops": {"raw_shards": {"config": {"source": f"{layout}:{tmp_path / 'pool'}"}},
                      "clusters": {"config": {"k": 4, "sample_size": 400}}}}
    with dg.instance_for_test() as instance:
        spine = dg.materialize(SPINE, resources=resources, run_config=config, instance=instance)
        assert spine.success
        pairs = spine.output_for_node("raw_pairs")
        assert not pairs.has_images and pairs.n_ok + sum(pairs.by_reason.values()) == pairs.n_total
        assert pairs.n_total == pool.total if hasattr(pool, "total") else True
        assert spine.output_for_node("reference_model").checkpoint is None, "nothing to train a model on"
        clusters = spine.output_for_node("clusters")
        assert clusters.n == pairs.n_ok and not clusters.has_images
        key = dg.MultiPartitionKey({"recipe": "dynamics-50.s0", "epoch": "epoch-001"})
        plan = dg.materialize([*SPINE, sample_plan, datacomp_subset], selection=[sample_plan, datacomp_subset],
                              partition_key=key, resources=resources, instance=instance)
        assert plan.success
        assert plan.output_for_node("sample_plan").realised == round(0.5 * pairs.n_ok)
    from dynamics_assets.core.export.datacomp import read_subset

    subset = read_subset(plan.output_for_node("datacomp_subset").subset_path)
    assert len(subset) == round(0.5 * pairs.n_ok) and subset.dtype.names == ("u0", "u1")
    assert (np.diff(subset["u0"].astype(np.float64)) >= 0).all(), "sorted by the uid's high half first"
