"""Asset-level tests: the whole curation spine on a tiny synthetic pool, through Dagster."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from dynamics_assets.defs.cluster import assets as clustering
from dynamics_assets.defs.embed import assets as embeddings
from dynamics_assets.defs.ingest import assets as raw_data
from dynamics_assets.defs.experiments import EXPERIMENTS
from dynamics_assets.defs.sample.assets import sample_plan
from dynamics_assets_tests.conftest import TINY_RUN_CONFIG

SPINE = [raw_data.raw_shards, raw_data.raw_pairs, embeddings.reference_model, embeddings.pair_embeddings,
         clustering.clusters, clustering.cluster_stats]


@pytest.fixture(scope="module")
def spine(tmp_path_factory):
    """materialize_to_memory over every unpartitioned asset (one run), on a tiny pool."""
    from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource

    root = tmp_path_factory.mktemp("spine") / "data"
    resources = {"storage": StorageResource(root=str(root)), "gpu": GpuResource(device="cpu"), "compute": ComputeResource()}
    result = dg.materialize_to_memory(SPINE, resources=resources, run_config=TINY_RUN_CONFIG)
    assert result.success
    return result, root, resources


def test_spine_accounts_for_every_pair(spine):
    result, root, _ = spine
    pairs = result.output_for_node("raw_pairs")
    shards = result.output_for_node("raw_shards")
    assert pairs.n_total == 480, "one manifest row per generated pair"
    assert pairs.n_ok + sum(pairs.by_reason.values()) == pairs.n_total
    planted = shards.dirt_counts
    assert pairs.by_reason.get("corrupt_image", 0) == planted["corrupt_image"]
    assert pairs.by_reason.get("empty_caption", 0) + pairs.by_reason.get("missing_caption", 0) == \
        planted["empty_caption"] + planted["missing_caption"]
    meta = result.asset_materializations_for_node("raw_pairs")[0].metadata
    assert meta["ok"].value == pairs.n_ok


def test_embeddings_clusters_and_stats_cover_every_valid_pair(spine):
    result, root, _ = spine
    n_ok = result.output_for_node("raw_pairs").n_ok
    emb = result.output_for_node("pair_embeddings")
    assert emb.n == n_ok
    ckpt = Path(result.output_for_node("reference_model").checkpoint)
    assert ckpt.exists()
    clusters = result.output_for_node("clusters")
    cluster_id = np.load(Path(clusters.clusters_dir) / "cluster_id.npy")
    assert len(cluster_id) == n_ok and cluster_id.max() < clusters.k
    assert (cluster_id >= 0).all(), "every valid sample is assigned"
    import pyarrow.parquet as pq

    stats = pq.read_table(result.output_for_node("cluster_stats").stats_path).to_pydict()
    assert sum(stats["size"]) == n_ok and len(stats["size"]) == clusters.k
    assert any(w for w in stats["top_words"]), "clusters are described by their caption words"


def plan_key(epoch: str, recipe: str = "dynamics-50.s0") -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"recipe": recipe, "epoch": epoch})


def test_sample_plan_partition_direct_invocation(spine):
    result, root, resources = spine
    clusters = result.output_for_node("clusters")
    plans = []
    for key in [plan_key("epoch-001"), plan_key("epoch-002"), plan_key("epoch-001", "uniform-100.s0")]:
        ctx = dg.build_asset_context(partition_key=key, resources={"storage": resources["storage"]})
        plans.append(sample_plan(ctx, clusters=clusters))
    n_ok = result.output_for_node("raw_pairs").n_ok
    assert plans[0].realised == round(0.5 * n_ok)
    assert plans[2].realised == n_ok, "uniform-100 plans the whole valid pool"
    d1, d2 = Path(plans[0].plan_dir), Path(plans[1].plan_dir)
    # <data>/artifacts/sample_plan/<recipe>/<epoch>/versions/<vid>: one committed version per draw
    assert (d1.parents[2].name, d1.parents[1].name) == ("dynamics-50.s0", "epoch-001")
    assert d2.parents[1].name == "epoch-002"
    assert (d1 / "indices.npy").read_bytes() != (d2 / "indices.npy").read_bytes()
    meta = json.loads((d1 / "plan.json").read_text())
    assert meta["pool_version"] == clusters.pool_version and meta["epoch"] == 1


@pytest.mark.parametrize("recipe", sorted({r.name for r in EXPERIMENTS.recipes.values()}))
def test_every_recipe_plans_through_a_real_instance(spine, tmp_path, recipe):
    """materialize (not to memory) on a temp folder: one recipe × epoch partition of sample_plan
    in a persistent instance, upstream records loaded by the filesystem IO manager."""
    _, root, resources = spine
    io = {"io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io"))}
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        first = dg.materialize(SPINE, resources={**resources, **io}, run_config=TINY_RUN_CONFIG,
                               instance=instance)
        assert first.success
        key = plan_key("epoch-003", f"{recipe}.s1")
        second = dg.materialize([*SPINE, sample_plan], selection=[sample_plan], partition_key=key,
                                resources={**resources, **io}, instance=instance)
        assert second.success
        record = second.output_for_node("sample_plan")
        assert record.epoch == 3 and Path(record.plan_dir).parents[1].name == "epoch-003"
        assert record.recipe == f"{recipe}.s1"
        mats = instance.fetch_materializations(dg.AssetKey("sample_plan"), limit=5).records
        assert [m.partition_key for m in mats] == [str(key)]
