"""Probes over the lineage a step joins (``core/io/lineage.py``): a partial materialisation through
Dagster, and the core API given a manifest, a plan or a pool that were never made from each other.
Each one trained or exported the wrong samples without an error on 0f8ecd8."""
from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from dynamics_assets.core.export.webdataset import export_plan
from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.ingest.synthetic import generate
from dynamics_assets.core.io import versions
from dynamics_assets.core.io.lineage import LineageError
from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, write_plan
from dynamics_assets.core.train.epoch import EpochJob, run_epoch
from dynamics_assets_tests.conftest import TINY_RUN_CONFIG

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# through Dagster: "Materialize selected" on raw_pairs, then on clusters alone
# ---------------------------------------------------------------------------------------------


def test_partial_materialisation_is_refused_then_a_full_recuration_succeeds(tmp_path, record):
    """Materialize raw_pairs of a new pool, then clusters alone (Materialize selected in the UI)"""
    from dynamics_assets.defs.cluster import assets as clustering
    from dynamics_assets.defs.embed import assets as embeddings
    from dynamics_assets.defs.ingest import assets as raw_data
    from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource

    spine = [raw_data.raw_shards, raw_data.raw_pairs, embeddings.reference_model, embeddings.pair_embeddings,
             clustering.clusters]
    root = tmp_path / "data"
    resources = {"storage": StorageResource(root=str(root)), "gpu": GpuResource(device="cpu"), "compute": ComputeResource(),
                 "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io"))}
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        first = dg.materialize(spine, resources=resources, run_config=TINY_RUN_CONFIG, instance=instance)
        assert first.success
        old_manifest = Path(first.output_for_node("raw_pairs").manifest_dir).name
        old_embeddings = Path(first.output_for_node("pair_embeddings").embeddings_dir).name
        old_pool = first.output_for_node("clusters").pool_version

        # new shards: another draw of the pool (more pairs), ingested alone
        config = {"ops": {**TINY_RUN_CONFIG["ops"],
                          "raw_shards": {"config": {**TINY_RUN_CONFIG["ops"]["raw_shards"]["config"], "pairs": 520}}}}
        only = lambda *names: {"ops": {n: c for n, c in config["ops"].items() if n in names}}  # noqa: E731
        new = dg.materialize(spine, selection=["raw_shards", "raw_pairs"], resources=resources,
                             run_config=only("raw_shards"), instance=instance)
        assert new.success
        new_manifest = Path(new.output_for_node("raw_pairs").manifest_dir).name
        assert new_manifest != old_manifest

        partial = dg.materialize(spine, selection=["clusters"], resources=resources, run_config=only("clusters"),
                                 instance=instance, raise_on_error=False)
        assert not partial.success
        failure = next(e for e in partial.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.event_specific_data.error.message
        assert f"was made from raw_pairs version {old_manifest}" in message, message
        assert f"raw_pairs version {new_manifest}" in message and old_embeddings in message, message
        assert "Materialise reference_model → pair_embeddings → clusters" in message, message
        assert versions.Artefact(root / "artifacts" / "clusters").current_id() == old_pool, "nothing committed"

        full = dg.materialize(spine, selection=["reference_model", "pair_embeddings", "clusters"],
                              resources=resources, instance=instance,
                              run_config=only("reference_model", "pair_embeddings", "clusters"))
        assert full.success
        pool = full.output_for_node("clusters")
        pins = versions.version_info(pool.clusters_dir)["refs"]
        assert pins["manifest"]["id"] == new_manifest
        assert pins["embeddings"]["id"] == Path(full.output_for_node("pair_embeddings").embeddings_dir).name
        assert versions.version_info(full.output_for_node("pair_embeddings").embeddings_dir)["refs"]["manifest"][
            "id"] == new_manifest
        assert pool.n == new.output_for_node("raw_pairs").n_ok
    record(f"clusters refused (LineageError: embeddings {old_embeddings} made from raw_pairs {old_manifest}, "
           f"raw_pairs is {new_manifest}; says what to materialise), CURRENT kept; the full re-curation then "
           f"committed a pool pinning the new manifest ({pool.n} pairs)")


# ---------------------------------------------------------------------------------------------
# the core API: two manifests, a pool version pinning the first
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_pools(tmp_path_factory):
    """Two manifest versions of one manifest root (the second has one more shard), a committed
    pool (clusters) version pinning the first, and a plan drawn on that pool."""
    tmp = tmp_path_factory.mktemp("lineage")
    ds = generate(tmp / "raw", pairs=480, samples_per_shard=120, eval_per_concept=1, seed=5)
    shards = sorted(ds.shards)
    a = build_manifest(shards[:3], tmp / "manifest")
    a_dir = Path(a.version_dir)
    b = build_manifest(shards, tmp / "manifest")
    b_dir = Path(b.version_dir)
    assert a_dir != b_dir
    ids = np.random.default_rng(0).integers(0, 4, a.ok).astype(np.int32)
    with versions.Artefact(tmp / "clusters", "clusters").write(refs={"manifest": a_dir}) as staging:
        np.save(staging / "cluster_id.npy", ids)
    pool = staging.version_dir
    plan = DynamicsSampler(0.5, alpha=0.2, mode="exact").draw(ClusterPool.from_array(ids, 4), epoch=1, seed=0)
    plan_dir = write_plan(tmp / "plan", plan, pool_version=pool)
    return tmp, ds, a_dir, b_dir, pool, plan_dir, ids


def _job(two_pools, name: str, **kw) -> EpochJob:
    tmp, ds, a_dir, _, pool, plan_dir, _ = two_pools
    base = dict(plan_dir=str(plan_dir), manifest_dir=str(a_dir), shards_dir=str(ds.out_dir / "shards"),
                out_checkpoint=str(tmp / "ck" / name), epoch=1, n_epochs=1, batch_size=32, buffer_size=32,
                checkpoint_every_steps=1, device="cpu", pool_version=str(pool))
    return EpochJob(**{**base, **kw})


def test_training_refuses_a_manifest_the_pool_does_not_pin(two_pools, record):
    """run_epoch given a manifest other than the one the pool version pins"""
    tmp, _, a_dir, b_dir, pool, _, _ = two_pools
    job = _job(two_pools, "other-manifest", manifest_dir=str(b_dir))
    with pytest.raises(LineageError, match=rf"pool version {pool.name} .*built from raw_pairs version {a_dir.name}"
                                           rf".*given raw_pairs version {b_dir.name}"):
        run_epoch(job)
    assert versions.Artefact(job.out_checkpoint).current() is None, "no checkpoint committed"
    # the plan's own pool ref finds the pin even when the caller passes only the pool's id
    with pytest.raises(LineageError):
        run_epoch(dataclasses.replace(job, pool_version=pool.name))
    record(f"refused before any step: LineageError naming pool {pool.name}, its manifest {a_dir.name} and the "
           f"given {b_dir.name} (also with the pool given as a bare id); no checkpoint committed")


def test_pool_version_is_required(two_pools, record):
    """An EpochJob without a pool version (it used to default to None, skipping the stale-plan check)"""
    job = _job(two_pools, "x")
    fields = {f.name: getattr(job, f.name) for f in dataclasses.fields(job) if f.name != "pool_version"}
    with pytest.raises(TypeError, match="pool_version"):
        EpochJob(**fields)
    record("refused: TypeError, pool_version is a required argument")


def test_export_refuses_a_manifest_the_pool_does_not_pin(two_pools, record):
    """export_plan given a manifest other than the one the pool version pins"""
    tmp, ds, a_dir, b_dir, pool, plan_dir, _ = two_pools
    with pytest.raises(LineageError, match=rf"export: pool version {pool.name}"):
        export_plan(plan_dir, b_dir, ds.out_dir / "shards", tmp / "export", pool=pool)
    assert versions.Artefact(tmp / "export").current() is None
    out = export_plan(plan_dir, a_dir, ds.out_dir / "shards", tmp / "export", pool=pool)
    from dynamics_assets.core.sample.plan_io import read_plan

    assert out.samples == read_plan(plan_dir).size
    record("refused: LineageError naming the pool, its manifest and the given one; nothing committed; "
           "the pinned manifest exports")


_CRASH = """
import sys
from dynamics_assets.core.train.epoch import EpochJob, run_epoch
job = EpochJob.from_json(sys.argv[1])
def die(step, metrics):
    if step >= 3:
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
run_epoch(job, on_step=die)
"""


def test_an_interrupted_epoch_does_not_resume_on_another_plan(two_pools, tmp_path, record):
    """Crash at step 3, redraw the plan with another α at the same size, rerun"""
    tmp, _, _, _, pool, plan_dir, ids = two_pools
    job = _job(two_pools, "redrawn")
    path = tmp_path / "job.json"
    path.write_text(__import__("json").dumps(dataclasses.asdict(job)))
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    old = DynamicsSampler(0.5, alpha=0.2, mode="exact").draw(ClusterPool.from_array(ids, 4), epoch=1, seed=0)
    other = DynamicsSampler(0.5, alpha=0.9, mode="exact").draw(ClusterPool.from_array(ids, 4), epoch=1, seed=0)
    assert other.size == old.size
    differ = len(np.setxor1d(np.repeat(old.indices, old.multiplicity), np.repeat(other.indices, other.multiplicity)))
    assert differ > 0
    redrawn = write_plan(tmp_path / "plan", other, pool_version=pool)
    metrics = run_epoch(dataclasses.replace(job, plan_dir=str(redrawn)))
    assert metrics["resumed_at_step"] == 0
    assert metrics["epoch_samples"] == other.size
    record(f"not resumed (another plan version, same size {other.size}, {differ} indices differ): "
           f"epoch restarted at step 0")
