"""Divide and Contrast through Dagster: uniform-100 with ``dnc_experts`` set in the checkpoint's
config — base, experts, student as the recipe's three epoch partitions, evaluated and costed."""
from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np

from dynamics_assets.core.train.divide_contrast import EXPERT_NAME
from dynamics_assets.defs.cluster import assets as clustering
from dynamics_assets.defs.embed import assets as embeddings
from dynamics_assets.defs.evaluate import assets as evaluation
from dynamics_assets.defs.ingest import assets as raw_data
from dynamics_assets.defs.partitions import epoch_partitions
from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource
from dynamics_assets.defs.sample import assets as sampling
from dynamics_assets.defs.tracking import MlflowResource
from dynamics_assets.defs.train import assets as training
from dynamics_assets_tests.conftest import TINY_RUN_CONFIG

SPINE = [raw_data.raw_shards, raw_data.raw_pairs, embeddings.reference_model, embeddings.pair_embeddings,
         clustering.clusters, clustering.cluster_stats]
EPOCH = [sampling.sample_plan, training.checkpoint, evaluation.eval_report]
K = 3
DNC_CONFIG = {"ops": {"checkpoint": {"config": {"batch_size": 32, "checkpoint_every_steps": 0, "dnc_experts": K}}}}


def test_dnc_recipe_materialises_three_phases(tmp_path):
    resources = {"storage": StorageResource(root=str(tmp_path / "data")), "gpu": GpuResource(device="cpu"), "compute": ComputeResource(),
                 "mlflow": MlflowResource(data_root=str(tmp_path / "data"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"),
                 "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io"))}
    (tmp_path / "home").mkdir()
    cks, reports = [], []
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        assert dg.materialize(SPINE, resources=resources, run_config=TINY_RUN_CONFIG, instance=instance).success
        for epoch in epoch_partitions.get_partition_keys():
            key = dg.MultiPartitionKey({"recipe": "uniform-100.s0", "epoch": epoch})
            last = epoch == epoch_partitions.get_partition_keys()[-1]  # evaluated: the student (saves ~40 s)
            r = dg.materialize([*SPINE, *EPOCH], selection=EPOCH if last else EPOCH[:2], partition_key=key,
                               resources=resources, run_config=DNC_CONFIG, instance=instance)
            assert r.success
            cks.append(r.output_for_node("checkpoint", "checkpoint"))
            if last:
                reports.append(r.output_for_node("eval_report"))
    assert [c.epoch for c in cks] == [1, 2, 3]
    per_epoch = cks[0].samples_seen
    assert [c.samples_seen for c in cks] == [per_epoch, 2 * per_epoch, 3 * per_epoch], "experts' samples counted"
    assert cks[0].scoring_flops == 0 < cks[1].scoring_flops < cks[2].scoring_flops, "embedding, then teachers"
    assert all((Path(cks[1].checkpoint).parent / EXPERT_NAME.format(k=k)).is_file() for k in range(K))
    assert all(np.isfinite(c.final_loss) for c in cks)
    for ck, rep in zip(cks[-1:], reports):
        m = rep.metrics
        assert 0.0 <= m["zero_shot/top1"] <= 1.0
        assert m["compute/scoring_flops"] == ck.scoring_flops
        assert m["compute/total_flops"] == m["compute/train_flops"] + ck.scoring_flops
