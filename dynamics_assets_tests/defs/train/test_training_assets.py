"""The training half through Dagster: epoch checkpoints chained on the previous partition, eval
reports, the learning curve, and MLflow runs that always end."""
from __future__ import annotations

import json

from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from mlflow import MlflowClient

from dynamics_assets.defs.cluster import assets as clustering
from dynamics_assets.defs.embed import assets as embeddings
from dynamics_assets.defs.evaluate import assets as evaluation
from dynamics_assets.defs.ingest import assets as raw_data
from dynamics_assets.defs.sample import assets as sampling
from dynamics_assets.defs.train import assets as training
from dynamics_assets.defs.partitions import epoch_partitions
from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource
from dynamics_assets.defs.tracking import MlflowResource, redact
from dynamics_assets_tests.conftest import TINY_RUN_CONFIG

SPINE = [raw_data.raw_shards, raw_data.raw_pairs, embeddings.reference_model, embeddings.pair_embeddings,
         clustering.clusters, clustering.cluster_stats]
EPOCH = [sampling.sample_plan, training.checkpoint, evaluation.eval_report]
REPORTS = [evaluation.learning_curve, evaluation.comparison_report]
ALL = [*SPINE, *EPOCH, *REPORTS]
RECIPES = ["dynamics-50.s0", "uniform-100.s0"]
EPOCH_CONFIG = {"ops": {"checkpoint": {"config": {"batch_size": 32, "checkpoint_every_steps": 2}}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    resources = {"storage": StorageResource(root=str(tmp / "data")), "gpu": GpuResource(device="cpu"), "compute": ComputeResource(),
                 "mlflow": MlflowResource(data_root=str(tmp / "data"), tracking_uri=uri),
                 "io_manager": dg.FilesystemIOManager(base_dir=str(tmp / "io"))}
    (tmp / "home").mkdir()
    results = {}
    with dg.instance_for_test(temp_dir=str(tmp / "home")) as instance:
        assert dg.materialize(SPINE, resources=resources, run_config=TINY_RUN_CONFIG, instance=instance).success
        for recipe in RECIPES:
            for epoch in epoch_partitions.get_partition_keys():
                key = dg.MultiPartitionKey({"recipe": recipe, "epoch": epoch})
                r = dg.materialize(ALL, selection=EPOCH, partition_key=key, resources=resources,
                                   run_config=EPOCH_CONFIG, instance=instance)
                assert r.success
                results[(recipe, epoch)] = r
        results["reports"] = dg.materialize(ALL, selection=REPORTS, resources=resources, instance=instance)
        assert results["reports"].success
        # the same partition again (as `--eval` on a finished run does): the committed checkpoint is reused
        key = dg.MultiPartitionKey({"recipe": RECIPES[0], "epoch": "epoch-002"})
        results["again"] = dg.materialize(ALL, selection=EPOCH, partition_key=key, resources=resources,
                                          run_config=EPOCH_CONFIG, instance=instance)
        assert results["again"].success
    return results, uri


def test_checkpoints_chain_across_epochs(trained):
    results, _ = trained
    cks = [results[("dynamics-50.s0", k)].output_for_node("checkpoint", "checkpoint") for k in epoch_partitions.get_partition_keys()]
    assert [c.epoch for c in cks] == [1, 2, 3]
    seen = [c.samples_seen for c in cks]
    steps = [c.global_step for c in cks]
    assert seen == sorted(seen) and seen[0] > 0 and len(set(seen)) == 3, "each epoch adds its plan"
    assert steps == sorted(steps) and len(set(steps)) == 3
    assert all(np.isfinite(c.final_loss) for c in cks)


def test_eval_reports_and_learning_curve(trained):
    results, _ = trained
    for key in epoch_partitions.get_partition_keys():
        rep = results[("dynamics-50.s0", key)].output_for_node("eval_report")
        m = rep.metrics
        for name in ["zero_shot/top1", "zero_shot/top5", "zero_shot/mean_per_class", "zero_shot/tail",
                     "retrieval/i2t_r1", "retrieval/t2i_r10"]:
            assert 0.0 <= m[name] <= 1.0, name
        assert m["compute/train_flops"] > 0 and m["compute/samples_seen"] > 0
        assert (Path(rep.report_dir) / "accuracy_vs_frequency.png").exists()
    curve = results["reports"].output_for_node("learning_curve")
    assert curve.entries == 6 and (Path(curve.report_dir) / "learning_curve.png").exists()
    comparison = results["reports"].output_for_node("comparison_report")
    assert comparison.entries == 2
    md = (Path(comparison.report_dir) / "comparison.md").read_text()
    assert "dynamics-50" in md and "uniform-100" in md and "equal compute" in md
    # the synthetic pool's structure and the tail's share of every plan (2 recipes × 3 epochs), same version
    structure = json.loads((Path(comparison.report_dir) / "pool_structure.json").read_text())
    assert 0 < structure["pool"]["tail_pool_share"] < 1 and 0 < structure["pool"]["purity"] <= 1
    assert len(structure["plans"]) == 6 and not structure["plans_of_another_pool_version"]
    assert {r["recipe"] for r in structure["recipes"]} == {"dynamics-50", "uniform-100"}
    assert all(0 <= r["tail_share"] <= 1 for r in structure["plans"])
    full = results[("uniform-100.s0", "epoch-001")].output_for_node("checkpoint", "checkpoint")
    half = results[("dynamics-50.s0", "epoch-001")].output_for_node("checkpoint", "checkpoint")
    assert full.samples_seen > 1.8 * half.samples_seen, "uniform-100 sees twice the samples"


def test_mlflow_runs_are_tagged_and_finished(trained):
    results, uri = trained
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("dynamics_assets")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    names = {r.info.run_name for r in runs}
    assert {"train dynamics-50.s0 epoch-001", "train uniform-100.s0 epoch-003", "eval dynamics-50.s0 epoch-002",
            "learning curve", "comparison report"} <= names
    assert {r.info.status for r in runs} == {"FINISHED"}
    train1 = next(r for r in runs if r.info.run_name == "train dynamics-50.s0 epoch-001")
    assert train1.data.tags["dagster.partition"] == "epoch-001|dynamics-50.s0"
    assert train1.data.tags["recipe"] == "dynamics-50.s0"
    # the training step is one multi_asset: its checkpoint and, for feedback recipes, the plan it draws
    assert train1.data.tags["dagster.asset"] == "checkpoint, feedback_plan"
    assert train1.data.tags["dagster.run_id"] == results[("dynamics-50.s0", "epoch-001")].run_id
    assert len(client.get_metric_history(train1.info.run_id, "loss")) >= 2, "per-step metrics"


def test_mlflow_run_fails_cleanly_and_redacts(tmp_path):
    res = MlflowResource(data_root=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(RuntimeError):
        with res.start_run(None, "boom") as run:
            raise RuntimeError("step failed")
    assert MlflowClient(tracking_uri=res.resolved_uri()).get_run(run.run_id).info.status == "FAILED"
    assert redact("https://user:secret@mlflow.example:5000/x") == "https://mlflow.example:5000/x"


def test_rematerialising_a_trained_partition_reuses_its_checkpoint(trained):
    """Same plan, previous checkpoint and settings: the same checkpoint version, no training step,
    its recorded compute (device seconds) carried on; the version is an open_clip model folder."""
    results, _ = trained
    first = results[(RECIPES[0], "epoch-002")].output_for_node("checkpoint", "checkpoint")
    again = results["again"].output_for_node("checkpoint", "checkpoint")
    assert again == first  # same version path, samples, steps, loss, device_seconds
    meta = next(m for m in results["again"].get_asset_materialization_events()
                if m.asset_key == dg.AssetKey("checkpoint")).materialization.metadata
    assert meta["reused"].value is True
    folder = Path(first.checkpoint).parent
    assert meta["open_clip_model"].value.count(f"local-dir:{folder}") == 2
    assert {"open_clip_config.json", "open_clip_model.safetensors"} <= {p.name for p in folder.iterdir()}
