"""Probes over plans, embeddings, training, settings and secrets: each injects one fault and
asserts the exact outcome (the error text, or that the fault is absorbed), then records it."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.ingest.synthetic import generate
from dynamics_assets.core.io.arrays import npy_chunks
from dynamics_assets.core.io.versions import Artefact, StalePlanError
from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, UniformSampler, sampler_from_spec, write_plan
from dynamics_assets.core.sample.plan_io import InvalidPlanError, read_plan
from dynamics_assets.core.sample.spec import SettingError, normalise_sampler_spec
from dynamics_assets.core.train.epoch import EpochJob, checkpoint_file, run_epoch
from dynamics_assets.core.train.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A 360-pair synthetic pool, its manifest, and a plan of 191 samples (not a multiple of the batch)."""
    tmp = tmp_path_factory.mktemp("faults-train")
    ds = generate(tmp / "raw", pairs=360, samples_per_shard=120, eval_per_concept=1, seed=5)
    summary = build_manifest(ds.shards, tmp / "manifest")
    ids = np.random.default_rng(0).integers(0, 6, summary.ok).astype(np.int32)
    plan = UniformSampler(191, mode="exact").draw(ClusterPool.from_array(ids, 6), epoch=1, seed=0)
    plan_dir = write_plan(tmp / "plan", plan, pool_version="pool-a")
    return tmp, ds, summary, ids, plan_dir


def job(pool, name: str, **kw) -> EpochJob:
    tmp, ds, summary, _, plan_dir = pool
    base = dict(plan_dir=str(plan_dir), manifest_dir=str(summary.version_dir), shards_dir=str(ds.out_dir / "shards"),
                out_checkpoint=str(tmp / "ck" / name), epoch=1, n_epochs=1, batch_size=64, buffer_size=64,
                checkpoint_every_steps=1, device="cpu", pool_version="pool-a")
    return EpochJob(**{**base, **kw})


def damaged_plan(pool, tmp_path, edit) -> Path:
    """A copy of the plan's files with ``edit(indices, multiplicity)`` applied (as a hand edit or
    a broken writer would leave them), in a plain directory."""
    src = pool[4]
    out = tmp_path / "damaged"
    out.mkdir()
    for name in ("clusters.parquet", "plan.json"):
        (out / name).write_bytes((src / name).read_bytes())
    idx, mult = np.load(src / "indices.npy"), np.load(src / "multiplicity.npy")
    idx, mult = edit(idx.copy(), mult.copy())
    np.save(out / "indices.npy", idx)
    np.save(out / "multiplicity.npy", mult)
    return out


# ---------------------------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------------------------


def test_unsorted_plan_is_refused_when_read(pool, tmp_path, record):
    """A plan whose uint32 indices step back"""
    def edit(i, m):
        i[[3, 4]] = i[[4, 3]]
        return i, m
    with pytest.raises(InvalidPlanError, match=r"indices not strictly increasing at entries \[4\]"):
        read_plan(damaged_plan(pool, tmp_path, edit))
    record("refused on read: InvalidPlanError 'indices not strictly increasing at entries [4]'")


def test_plan_with_multiplicity_zero_is_refused(pool, tmp_path, record):
    """A plan with a multiplicity of 0"""
    def edit(i, m):
        m[7] = 0
        return i, m
    with pytest.raises(InvalidPlanError, match=r"multiplicity < 1 at entries \[7\]"):
        read_plan(damaged_plan(pool, tmp_path, edit))
    record("refused on read: InvalidPlanError 'multiplicity < 1 at entries [7]'")


def test_plan_whose_files_disagree_with_its_record_is_refused(pool, tmp_path, record):
    """A plan with a sample removed behind plan.json's back"""
    with pytest.raises(InvalidPlanError, match="multiplicities sum to 190, plan.json says realised 191"):
        read_plan(damaged_plan(pool, tmp_path, lambda i, m: (i[1:], m[1:])))
    record("refused on read: InvalidPlanError 'multiplicities sum to 190, plan.json says realised 191'")


def test_training_refuses_a_plan_of_another_pool_version(pool, record):
    """Training a plan drawn on pool version A against pool version B"""
    with pytest.raises(StalePlanError) as err:
        run_epoch(job(pool, "stale", pool_version="pool-b"))
    assert "pool-a" in str(err.value) and "pool-b" in str(err.value)
    record("refused: StalePlanError naming both versions (pool-a, pool-b)")


def test_training_refuses_a_damaged_plan(pool, tmp_path, record):
    """Training on a plan with unsorted indices"""
    def edit(i, m):
        i[[0, 1]] = i[[1, 0]]
        return i, m
    with pytest.raises(InvalidPlanError):
        run_epoch(job(pool, "damaged", plan_dir=str(damaged_plan(pool, tmp_path, edit))))
    assert not (pool[0] / "ck" / "damaged" / "CURRENT").exists()
    record("refused before any step: InvalidPlanError; no checkpoint committed")


# ---------------------------------------------------------------------------------------------
# training: the whole plan, and resume only with the same sample order
# ---------------------------------------------------------------------------------------------


def test_the_whole_plan_is_trained_with_a_smaller_last_batch(pool, record):
    """A 191-sample plan at batch 64 (not a multiple)"""
    steps = []
    m = run_epoch(job(pool, "whole"), on_step=lambda s, _: steps.append(s))
    assert m["epoch_samples"] == 191 == m["samples_seen"], "samples seen = plan size"
    assert m["steps"] == 3 == len(steps), "64 + 64 + 63"
    record("trained: 3 steps (64 + 64 + 63), samples seen 191 = plan size")


def test_a_plan_smaller_than_one_batch_is_trained(pool, tmp_path, record):
    """A 40-sample plan at batch 64"""
    ids = pool[3]
    plan = UniformSampler(40, mode="exact").draw(ClusterPool.from_array(ids, 6), epoch=1, seed=1)
    plan_dir = write_plan(tmp_path / "small", plan, pool_version="pool-a")
    m = run_epoch(job(pool, "small", plan_dir=str(plan_dir)))
    assert m["steps"] == 1 and m["epoch_samples"] == 40
    record("trained: 1 step of 40, samples seen 40")


@pytest.mark.parametrize("change", [{"batch_size": 32}, {"seed": 7}, {"buffer_size": 16}])
def test_step_checkpoint_of_another_order_is_not_resumed(pool, change, record):
    """Crash mid-epoch, change a setting that reorders samples, rerun"""
    name = "resume-" + "-".join(change)
    first = job(pool, name)
    code = ("import sys, json; from dynamics_assets.core.train.epoch import EpochJob, run_epoch; "
            "job = EpochJob.from_json(sys.argv[1]); run_epoch(job, on_step=lambda s, m: "
            "(s >= 2) and __import__('os').kill(__import__('os').getpid(), 9))")
    spec = pool[0] / f"{name}.json"
    from dataclasses import asdict
    spec.write_text(json.dumps(asdict(first)))
    proc = subprocess.run([sys.executable, "-c", code, str(spec)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    staged = list((Path(first.out_checkpoint) / ".staging").glob("*/step.pt"))
    assert staged, "the killed epoch left its step checkpoint"
    m = run_epoch(replace(first, **change))
    assert m["resumed_at_step"] == 0, "a step checkpoint of another sample order is never resumed"
    assert m["epoch_samples"] == 191
    same = run_epoch(job(pool, name + "-same"))
    assert same["resumed_at_step"] == 0
    record(f"not resumed ({', '.join(f'{k} changed' for k in change)}): epoch restarted at step 0, 191 samples")


def test_sigkill_mid_epoch_resumes_to_the_same_weights(pool, record):
    """SIGKILL during training, then rerun with the same settings"""
    import torch

    from dynamics_assets.core.model.clip import read_checkpoint

    straight = run_epoch(job(pool, "straight"))
    killed = job(pool, "killed")
    from dataclasses import asdict
    spec = pool[0] / "killed.json"
    spec.write_text(json.dumps(asdict(killed)))
    code = ("import sys; from dynamics_assets.core.train.epoch import EpochJob, run_epoch; "
            "run_epoch(EpochJob.from_json(sys.argv[1]), on_step=lambda s, m: "
            "(s >= 2) and __import__('os').kill(__import__('os').getpid(), 9))")
    proc = subprocess.run([sys.executable, "-c", code, str(spec)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    assert Artefact(killed.out_checkpoint).current() is None, "nothing committed by the killed run"
    resumed = run_epoch(killed)
    assert resumed["resumed_at_step"] == 2
    a = read_checkpoint(checkpoint_file(straight["checkpoint"]))["state_dict"]
    b = read_checkpoint(checkpoint_file(resumed["checkpoint"]))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((Path(killed.out_checkpoint) / ".staging").iterdir()), "the staging directory was committed"
    record("resumed at step 2; final weights bit-identical to an uninterrupted epoch; staging cleaned")


# ---------------------------------------------------------------------------------------------
# embeddings on disk
# ---------------------------------------------------------------------------------------------


def test_half_written_npy_is_named(tmp_path, record):
    """An embedding .npy cut short (a crash mid-write, a copy in progress)"""
    path = tmp_path / "image.npy"
    np.save(path, np.ones((100, 8), np.float16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])
    with pytest.raises(ValueError, match=r"image\.npy: truncated: \(100, 8\) declared, data ends near row 81"):
        list(npy_chunks(path, 64))
    record("refused: ValueError naming the file and the row where its data ends")


def test_embedding_shard_with_misaligned_ids_is_named(tmp_path, record):
    """An embedding shard whose sample ids do not match its rows"""
    shard = tmp_path / "emb" / "shard-0"
    shard.mkdir(parents=True)
    for kind in ("image", "text"):
        np.save(shard / f"{kind}.npy", np.ones((10, 4), np.float16))
    np.save(shard / "sample_id.npy", np.array(["a"] * 9))
    with pytest.raises(ValueError, match=r"sample_id\.npy: shape \(9,\), expected \(10,\)"):
        EmbeddingStore(tmp_path / "emb")
    record("refused: ValueError naming sample_id.npy and both shapes")


# ---------------------------------------------------------------------------------------------
# settings: refused when the run starts, naming the setting and its allowed range
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ({"strategy": "dynamics", "budget": 1}, "budget 1 is ambiguous"),
    ({"strategy": "dynamics", "budget": "150%"}, "a percentage must lie in (0%, 100%]"),
    ({"strategy": "dynamics", "budget": 1.5}, "a fraction of the pool must lie in (0, 1]"),
    ({"strategy": "dynamics", "budget": {"count": 0}}, "a count is written {count: N} with an integer N ≥ 1"),
    ({"strategy": "dynamic", "budget": 0.5}, "unknown strategy 'dynamic'"),
    ({"strategy": "dynamics", "budget": 0.5, "alfa": 0.2}, "has no parameter(s) ['alfa']"),
    ({"strategy": "compose", "steps": []}, "compose needs at least one step"),
], ids=["budget-1", "budget-150%", "budget-1.5", "count-0", "unknown-strategy", "unknown-parameter", "empty-compose"])
def test_bad_sampler_settings_are_refused(spec, message, record):
    """A bad sampler setting in experiments.yaml"""
    with pytest.raises(SettingError) as err:
        normalise_sampler_spec(spec, "recipe 'x': sampler")
    assert message in str(err.value) and "recipe 'x'" in str(err.value)
    record(f"refused at load: '{message}'")


def test_percent_and_count_budgets_are_read_as_meant(record):
    """Budgets written '50%', 0.5 and {count: 1}"""
    assert normalise_sampler_spec({"strategy": "uniform", "budget": "50%"}, "r")["budget"] == 0.5
    assert normalise_sampler_spec({"strategy": "uniform", "budget": 0.5}, "r")["budget"] == 0.5
    assert normalise_sampler_spec({"strategy": "uniform", "budget": {"count": 1}}, "r")["budget"] == 1
    record("read: '50%' and 0.5 as half the pool, {count: 1} as one sample")


def test_alpha_outside_the_unit_interval_is_refused(record):
    """DynamiCS with alpha = 1.5"""
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\], got 1.5"):
        sampler_from_spec({"strategy": "dynamics", "budget": 0.5, "alpha": 1.5})
    record("refused when the sampler is built: 'alpha must lie in [0, 1], got 1.5'")


def test_budget_above_the_pool_is_refused(pool, record):
    """A count budget larger than the pool (DynamiCS exact)"""
    ids = pool[3]
    with pytest.raises(ValueError, match=rf"budget \{{count: 100000\}} exceeds .* \(allowed: 1 ≤ count ≤ {len(ids)},"):
        DynamicsSampler(100_000, alpha=0.2).draw(ClusterPool.from_array(ids, 6), epoch=1, seed=0)
    record(f"refused: 'budget {{count: 100000}} exceeds … (allowed: 1 ≤ count ≤ {len(ids)} …)'")


def test_k_above_the_pool_is_refused(tmp_path, record):
    """clusters.k larger than the pool"""
    from dynamics_assets.core.cluster.curate import ClusterParams, cluster_pool

    emb = tmp_path / "emb" / "shard-0"
    emb.mkdir(parents=True)
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float16)
    x /= np.linalg.norm(x.astype(np.float32), axis=1, keepdims=True).astype(np.float16)
    for kind in ("image", "text"):
        np.save(emb / f"{kind}.npy", x)
    np.save(emb / "sample_id.npy", np.array([f"{i:032x}" for i in range(50)]))
    with pytest.raises(ValueError, match=r"clusters.k = 100 does not fit the pool's 50 embedded pairs \(allowed: 1 ≤ k ≤ 50"):
        cluster_pool(tmp_path / "emb", tmp_path / "emb", tmp_path / "clusters", ClusterParams(k=100))
    record("refused: 'clusters.k = 100 does not fit the pool's 50 embedded pairs (allowed: 1 ≤ k ≤ 50 …)'")


@pytest.mark.parametrize("overrides, message", [
    ({"batchsize": 64}, "unknown training setting(s) ['batchsize']"),
    ({"lr": 0}, "lr must be > 0"),
    ({"warmup_fraction": 1.5}, "warmup_fraction must lie in [0, 1)"),
    ({"selection": "random"}, "selection must be one of ('jest', 'activeclip')"),
    ({"batch_size": 1}, "batch_size must be ≥ 2"),
], ids=["unknown-key", "lr-0", "warmup-1.5", "selection", "batch-1"])
def test_bad_training_settings_are_refused(overrides, message, record):
    """A bad training override in a recipe"""
    with pytest.raises(ValueError) as err:
        TrainSettings().with_overrides(overrides, source="recipe 'x': training")
    assert message in str(err.value)
    record(f"refused at load: '{message}'")


def test_experiments_file_with_a_bad_budget_fails_to_load(tmp_path, record):
    """experiments.yaml with budget: 1"""
    from dynamics_assets.defs.experiments import load_experiments

    path = tmp_path / "experiments.yaml"
    path.write_text("recipes:\n  all:\n    sampler: {strategy: uniform, budget: 1}\n")
    with pytest.raises(SettingError, match=r"experiments.yaml: recipe 'all': sampler.budget: budget 1 is ambiguous"):
        load_experiments(path)
    record("the code location refuses to load: names the file, the recipe and the setting")


# ---------------------------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["https://user:hunter2@mlflow.example:5000/?token=hunter2",
                                 "http://mlflow.example/api?password=hunter2#hunter2",
                                 "postgresql://mlflow:hunter2@db.example/mlflow"])
def test_tracking_uri_secrets_never_reach_metadata(uri, record):
    """A tracking URI carrying a password or token"""
    from dynamics_assets.defs.tracking import redact

    shown = redact(uri)
    assert "hunter2" not in shown and "mlflow.example" in shown or "db.example" in shown
    record(f"redacted to {shown}")


def test_tracking_uri_is_an_env_var_in_the_resource(monkeypatch, record):
    """MLFLOW_TRACKING_URI with a token, as the code location loads"""
    import dagster as dg

    from dynamics_assets.defs.resources import default_resources

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://u:hunter2@mlflow.example/?token=hunter2")
    resource = default_resources()["mlflow"]
    assert isinstance(resource.tracking_uri, dg.EnvVar) or "hunter2" not in repr(resource)
    assert "hunter2" not in json.dumps(resource._get_non_default_public_field_values() if hasattr(
        resource, "_get_non_default_public_field_values") else {}, default=str)
    record("configured as EnvVar('MLFLOW_TRACKING_URI'): the UI shows the variable's name, not its value")


def test_column_major_npy_is_read_row_by_row(tmp_path, record):
    """An embedding .npy saved in Fortran (column-major) order, as np.save writes a transposed array"""
    a = np.asfortranarray(np.arange(400, dtype=np.float16).reshape(100, 4))
    np.save(tmp_path / "image.npy", a)
    got = np.concatenate([chunk for _, chunk in npy_chunks(tmp_path / "image.npy", 32)])
    assert np.array_equal(got, a) and got.flags.c_contiguous
    record("read chunk by chunk through a memory map, rows identical to the array saved")
