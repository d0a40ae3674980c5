"""Cluster-level learnability feedback through Dagster: the lineage shows that the plan of epoch e
depends on the checkpoint of epoch e−1, and two epochs of the learnability recipe materialise, the
second trained on a plan drawn from the first's per-cluster loss."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np

from dynamics_assets.core.sample import ClusterFeedback, read_plan
from dynamics_assets.defs.cluster import assets as clustering
from dynamics_assets.defs.embed import assets as embeddings
from dynamics_assets.defs.ingest import assets as raw_data
from dynamics_assets.defs.partitions import epoch_partitions
from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource
from dynamics_assets.defs.sample import assets as sampling, checks as sample_checks
from dynamics_assets.defs.train import assets as training
from dynamics_assets.defs.tracking import MlflowResource
from dynamics_assets_tests.conftest import TINY_RUN_CONFIG

SPINE = [raw_data.raw_shards, raw_data.raw_pairs, embeddings.reference_model, embeddings.pair_embeddings,
         clustering.clusters, clustering.cluster_stats]
EPOCH = [sampling.sample_plan, training.checkpoint]
RECIPE = "learnability-50.s0"


def test_the_plan_of_an_epoch_depends_on_the_previous_epochs_checkpoint():
    from dynamics_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    plan, ckpt = dg.AssetKey("feedback_plan"), dg.AssetKey("checkpoint")
    # feedback_plan(e) ← checkpoint(e−1); not the reverse edge (a cycle of keys: the UI would draw no lineage)
    assert ckpt in graph.get(plan).parent_keys and plan not in graph.get(ckpt).parent_keys
    mapping = graph.get_partition_mapping(plan, ckpt)
    key = dg.MultiPartitionKey({"recipe": RECIPE, "epoch": "epoch-002"})
    upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
        graph.get(plan).partitions_def.subset_with_partition_keys([key]), graph.get(ckpt).partitions_def,
        graph.get(ckpt).partitions_def)
    assert list(upstream.partitions_subset.get_partition_keys()) == [
        dg.MultiPartitionKey({"recipe": RECIPE, "epoch": "epoch-001"})], "previous epoch, same recipe"
    assert graph.get(plan).partitions_def == graph.get(ckpt).partitions_def


def test_two_epochs_of_the_learnability_recipe(tmp_path):
    resources = {"storage": StorageResource(root=str(tmp_path / "data")), "gpu": GpuResource(device="cpu"), "compute": ComputeResource(),
                 "mlflow": MlflowResource(data_root=str(tmp_path / "data"), tracking_uri=f"sqlite:///{tmp_path / 'ml.db'}"),
                 "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io"))}
    (tmp_path / "home").mkdir()
    config = {"ops": {"checkpoint": {"config": {"batch_size": 32, "checkpoint_every_steps": 0}}}}
    ckpts, plans = [], []
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        assert dg.materialize(SPINE, resources=resources, run_config=TINY_RUN_CONFIG, instance=instance).success
        for epoch in epoch_partitions.get_partition_keys()[:2]:
            key = dg.MultiPartitionKey({"recipe": RECIPE, "epoch": epoch})
            r = dg.materialize([*SPINE, *EPOCH, sample_checks.feedback_plan_is_valid], selection=[*EPOCH, sample_checks.feedback_plan_is_valid],
                               partition_key=key, resources=resources, run_config=config, instance=instance)
            assert r.success
            ckpts.append(r.output_for_node("checkpoint", "checkpoint"))
            plans.append(r.output_for_node("checkpoint", "feedback_plan"))
            checks = r.get_asset_check_evaluations()
            assert [c.check_name for c in checks] == ["feedback_plan_is_valid"] and checks[0].passed
            prior = r.output_for_node("sample_plan")
        # epoch 2 trained on the feedback plan drawn from epoch 1's recorded per-cluster loss
        assert [c.plan_dir for c in ckpts] == [p.plan_dir for p in plans]
        fb = ClusterFeedback.read(ckpts[0].cluster_loss)
        assert fb.count.sum() == ckpts[0].samples_seen
        meta2 = json.loads((Path(plans[1].plan_dir) / "plan.json").read_text())
        assert meta2["feedback"]["source"] == ckpts[0].cluster_loss and meta2["feedback"]["clusters_seen"] > 0
        assert json.loads((Path(plans[0].plan_dir) / "plan.json").read_text())["feedback"]["source"] is None
        p2, prior2 = read_plan(plans[1].plan_dir), read_plan(prior.plan_dir)
        assert p2.size == prior2.size, "same budget as the size-only prior"
        assert not np.array_equal(p2.cluster_realised, prior2.cluster_realised), "the feedback moved draws"
        assert ckpts[1].samples_seen == ckpts[0].samples_seen + p2.size and ckpts[1].scoring_flops == 0.0
        # the lineage events: epoch 2's feedback_plan materialisation is recorded under its own key
        event = instance.get_latest_materialization_event(dg.AssetKey("feedback_plan"))
        assert event.asset_materialization.partition == str(dg.MultiPartitionKey({"recipe": RECIPE, "epoch": "epoch-002"}))
