"""Evaluation places its images in the pool's clusters with the encoder the pool was embedded with,
even when that is not the reference model; and a pool follows its source folder."""
from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from dynamics_assets.core.model.spec import EncoderSpec
from dynamics_assets.defs.cluster import assets as clustering
from dynamics_assets.defs.embed import assets as embeddings
from dynamics_assets.defs.evaluate.assets import eval_report
from dynamics_assets.defs.ingest import assets as raw_data
from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource
from dynamics_assets.defs.sample.assets import sample_plan
from dynamics_assets.defs.tracking import MlflowResource
from dynamics_assets.defs.train.assets import checkpoint
from dynamics_assets_tests.conftest import TINY_RUN_CONFIG

SPINE = [raw_data.raw_shards, raw_data.raw_pairs, embeddings.reference_model, embeddings.pair_embeddings,
         clustering.clusters, clustering.cluster_stats]
EPOCH = [sample_plan, checkpoint, eval_report]
# A non-default encoder for the pool: dynamics-tiny-32 from its seeded random initialisation, not the
# reference model trained on the pool (so its embedding space differs from the reference model's).
OTHER_ENCODER = {"model_name": "dynamics-tiny-32"}


def resources(root: Path, io: Path) -> dict:
    return {"storage": StorageResource(root=str(root)), "gpu": GpuResource(device="cpu"), "compute": ComputeResource(),
            "mlflow": MlflowResource(data_root=str(root)), "io_manager": dg.FilesystemIOManager(base_dir=str(io))}


def test_eval_report_uses_the_pools_encoder_not_the_reference_model(tmp_path, record):
    """pair_embeddings configured with another encoder than the reference model"""
    from dynamics_assets.core.evaluate.report import embed_eval_images, load_eval_set
    from dynamics_assets.core.model.clip import load_encoder

    res = resources(tmp_path / "data", tmp_path / "io")
    config = {"ops": {**TINY_RUN_CONFIG["ops"], "pair_embeddings": {"config": {**OTHER_ENCODER, "batch_size": 128}}}}
    key = dg.MultiPartitionKey({"recipe": "dynamics-50.s0", "epoch": "epoch-001"})
    with dg.instance_for_test() as instance:
        spine = dg.materialize(SPINE, resources=res, run_config=config, instance=instance)
        clusters = spine.output_for_node("clusters")
        reference = spine.output_for_node("reference_model")
        assert clusters.encoder.model_name == "dynamics-tiny-32" and clusters.encoder.pretrained is None
        assert reference.checkpoint, "the reference model exists, and is not the pool's encoder"
        run = dg.materialize([*SPINE, *EPOCH], selection=EPOCH, partition_key=key, resources=res,
                             instance=instance, run_config={"ops": {"checkpoint": {"config": {"batch_size": 64}}}})
        assert run.success
        report = run.output_for_node("eval_report")
    eval_set = load_eval_set(spine.output_for_node("raw_pairs").eval_dir)
    centroids = np.load(Path(clusters.clusters_dir) / "centroids.npy")

    def assignment(spec: EncoderSpec) -> np.ndarray:
        enc = load_encoder(spec, "cpu")
        return np.argmax(embed_eval_images(enc.model, enc.preprocess, eval_set, "cpu") @ centroids.T, axis=1)

    pool_space = np.bincount(assignment(clusters.encoder), minlength=clusters.k)
    reference_space = np.bincount(assignment(EncoderSpec(reference.model_name, reference.checkpoint)),
                                  minlength=clusters.k)
    per_cluster = pq.read_table(Path(report.report_dir) / "per_cluster.parquet").to_pydict()
    reported = np.zeros(clusters.k, dtype=np.int64)
    reported[np.asarray(per_cluster["cluster"], dtype=np.int64)] = per_cluster["n"]
    assert np.array_equal(reported, pool_space), "eval images placed with the pool's encoder"
    assert not np.array_equal(pool_space, reference_space), "the reference model would place them elsewhere"
    record("eval images assigned to the pool's clusters with the pool's encoder (not the reference model)")


def test_a_pool_follows_its_source_folder(tmp_path, record):
    """A shard removed from the source folder between two curations"""
    from dynamics_assets.core.ingest.synthetic import generate

    ds = generate(tmp_path / "raw", pairs=360, samples_per_shard=120, eval_per_concept=1, seed=4)
    source = tmp_path / "source"
    source.mkdir()
    for shard in ds.shards:
        shutil.copy(shard, source / Path(shard).name)
    res = resources(tmp_path / "data", tmp_path / "io")
    config = {"ops": {"raw_shards": {"config": {"source": f"file://{source}"}}}}
    first = dg.materialize([raw_data.raw_shards, raw_data.raw_pairs], resources=res, run_config=config)
    gone = sorted(p.name for p in source.glob("*.tar"))[0]
    (source / gone).unlink()
    second = dg.materialize([raw_data.raw_shards, raw_data.raw_pairs], resources=res, run_config=config)
    before, after = first.output_for_node("raw_pairs"), second.output_for_node("raw_pairs")
    meta = second.asset_materializations_for_node("raw_pairs")[0].metadata
    assert meta["shards_gone_from_source"].value == [gone]
    assert after.n_total == before.n_total - 120 and after.n_ok + sum(after.by_reason.values()) == after.n_total
    from dynamics_assets.core.ingest.manifest import manifest_files
    assert gone not in {name for name, _ in manifest_files(after.manifest_dir)}
    assert gone in {name for name, _ in manifest_files(before.manifest_dir)}, "the older version is unchanged"
    record(f"the shard left the pool's next manifest version (recorded as gone from the source); "
           f"{after.n_total} pairs = kept + quarantined")
