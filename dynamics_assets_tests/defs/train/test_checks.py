"""Asset checks: each passes on the artefacts of a tiny materialisation and fails on a corrupted
copy; a failing blocking check stops the downstream asset in the same run."""
import json
from dataclasses import replace
from types import SimpleNamespace
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch

from dynamics_assets.core.evaluate.report import evaluate_model
from dynamics_assets.core.model.clip import EncoderSpec, load_encoder, read_checkpoint
from dynamics_assets.core.sample import ClusterPool, sampler_from_spec, write_plan
from dynamics_assets.defs.cluster import assets as clustering
from dynamics_assets.defs.embed import assets as embeddings
from dynamics_assets.defs.evaluate import assets as evaluation
from dynamics_assets.defs.ingest import assets as raw_data
from dynamics_assets.defs.sample import assets as sampling
from dynamics_assets.defs.train import assets as training
from dynamics_assets.defs.experiments import EXPERIMENTS
from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource
from dynamics_assets.defs.tracking import MlflowResource
from dynamics_assets_tests.conftest import TINY_RUN_CONFIG
from dynamics_assets.core.cluster.validate import cluster_findings
from dynamics_assets.core.records import CheckpointRecord, EvalRecord
from dynamics_assets.core.sample.validate import plan_findings
from dynamics_assets.core.train.validate import checkpoint_findings
from dynamics_assets.defs.cluster.checks import every_pair_assigned
from dynamics_assets.defs.embed.checks import embeddings_finite_unit_norm
from dynamics_assets.defs.evaluate.checks import metrics_in_unit_range
from dynamics_assets.defs.sample.checks import plan_is_valid
from dynamics_assets.defs.train.checks import checkpoint_loads

checks = SimpleNamespace(  # each stage's checks, and the pure findings behind them
    embeddings_finite_unit_norm=embeddings_finite_unit_norm, every_pair_assigned=every_pair_assigned,
    plan_is_valid=plan_is_valid, checkpoint_loads=checkpoint_loads, metrics_in_unit_range=metrics_in_unit_range,
    cluster_findings=cluster_findings, plan_findings=plan_findings, checkpoint_findings=checkpoint_findings,
    asset_checks=[embeddings_finite_unit_norm, every_pair_assigned, plan_is_valid, checkpoint_loads,
                  metrics_in_unit_range])

SPINE = [raw_data.raw_shards, raw_data.raw_pairs, embeddings.reference_model, embeddings.pair_embeddings,
         clustering.clusters, clustering.cluster_stats]
EVERYTHING = [*SPINE, sampling.sample_plan, training.checkpoint, evaluation.eval_report, *checks.asset_checks]
ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN


def plan_key(epoch: str = "epoch-002") -> str | dg.MultiPartitionKey:
    """sample_plan's partition for the default recipe at ``epoch`` (just ``epoch`` when plans
    are partitioned by epoch alone)."""
    if isinstance(sampling.sample_plan.partitions_def, dg.MultiPartitionsDefinition):
        return dg.MultiPartitionKey({"recipe": EXPERIMENTS.default_keys[0], "epoch": epoch})
    return epoch


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """The spine, then one partition of sample_plan, with their checks, in a persistent instance."""
    tmp = tmp_path_factory.mktemp("checks")
    resources = resources_at(tmp / "data", tmp / "io")
    (tmp / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp / "home")) as instance:
        spine = dg.materialize(EVERYTHING, selection=dg.AssetSelection.assets(*SPINE), resources=resources,
                               run_config=TINY_RUN_CONFIG, instance=instance)
        plan = dg.materialize(EVERYTHING, selection=dg.AssetSelection.assets(sampling.sample_plan),
                              partition_key=plan_key(), resources=resources, instance=instance)
        yield {"spine": spine, "plan": plan, "tmp": tmp, "instance": instance,
               **{node: spine.output_for_node(node) for node in ("raw_pairs", "reference_model",
                                                                 "pair_embeddings", "clusters")},
               "sample_plan": plan.output_for_node("sample_plan")}


def resources_at(root: Path, io_dir: Path) -> dict:
    """CPU resources on a data root; MLflow is configured (the epoch assets need it) but unused."""
    return {"storage": StorageResource(root=str(root)), "gpu": GpuResource(device="cpu"), "compute": ComputeResource(),
            "mlflow": MlflowResource(data_root=str(root)), "io_manager": dg.FilesystemIOManager(base_dir=str(io_dir))}


def copied(src: str, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def first_shard(emb_dir: Path) -> Path:
    return sorted(p for p in emb_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))[0]


def overwrite_npy(path: Path, edit) -> None:
    array = np.load(path)
    edit(array)
    np.save(path, array)


# ---------------------------------------------------------------------------------------------
# In the run: every check evaluated and passed, per partition where the asset is partitioned
# ---------------------------------------------------------------------------------------------


def test_checks_pass_in_the_materialising_runs(pool):
    evals = {e.check_name: e for r in (pool["spine"], pool["plan"]) for e in r.get_asset_check_evaluations()}
    assert set(evals) == {"embeddings_finite_unit_norm", "every_pair_assigned", "plan_is_valid"}
    assert all(e.passed for e in evals.values()), {k: e.description for k, e in evals.items()}
    assert evals["every_pair_assigned"].metadata["assigned"].value == pool["pair_embeddings"].n
    assert evals["plan_is_valid"].partition == str(plan_key()), "a partitioned check runs for its run's partition"
    check_key = dg.AssetCheckKey(dg.AssetKey("sample_plan"), "plan_is_valid")
    latest = pool["instance"].event_log_storage.get_latest_asset_check_execution_by_key([check_key])
    assert latest[check_key].status.value == "SUCCEEDED"


def test_blocking_check_stops_downstream_in_the_same_run(pool, tmp_path):
    """A NaN row in an embedding shard (kept by the resumable embedding step) fails the
    embeddings check, and clusters is not materialised."""
    root = tmp_path / "data"
    version = Path(pool["pair_embeddings"].embeddings_dir)  # <root>/versions/<vid>
    emb_root = copied(str(version.parents[1]), root / "artifacts" / "pair_embeddings")
    overwrite_npy(first_shard(emb_root / "versions" / version.name) / "image.npy",
                  lambda a: a.__setitem__((3, 0), np.nan))
    # ...and recorded so in _version.json (the embedding step re-embeds a shard its record disowns)
    import hashlib
    info_path = emb_root / "versions" / version.name / "_version.json"
    info, image = json.loads(info_path.read_text()), first_shard(emb_root / "versions" / version.name) / "image.npy"
    info["files"][f"{image.parent.name}/image.npy"] = {"sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
                                                       "size": image.stat().st_size}
    info_path.write_text(json.dumps(info))
    resources = resources_at(root, copied(pool["tmp"] / "io", tmp_path / "io"))
    result = dg.materialize(EVERYTHING, selection=dg.AssetSelection.assets(embeddings.pair_embeddings,
                                                                           clustering.clusters),
                            resources=resources, raise_on_error=False,
                            run_config={"ops": {k: TINY_RUN_CONFIG["ops"][k] for k in ("pair_embeddings", "clusters")}})
    assert not result.success
    [evaluation_] = result.get_asset_check_evaluations()
    assert not evaluation_.passed and evaluation_.severity == ERROR
    assert evaluation_.metadata["error/non_finite_rows"].value == 1
    assert [m.asset_key for m in result.get_asset_materialization_events()] == [dg.AssetKey("pair_embeddings")]
    steps = {(e.event_type_value, e.step_key) for e in result.all_events}
    assert ("STEP_FAILURE", "pair_embeddings_embeddings_finite_unit_norm") in steps
    assert not any(step == "clusters" for _, step in steps), "the clusters step never starts"
    assert not (root / "artifacts" / "clusters").exists()


# ---------------------------------------------------------------------------------------------
# pair_embeddings
# ---------------------------------------------------------------------------------------------


def embeddings_check(record: dict, emb_dir: Path) -> dg.AssetCheckResult:
    return checks.embeddings_finite_unit_norm(pair_embeddings=replace(record, embeddings_dir=str(emb_dir)))


def test_embeddings_check_flags_zero_rows_off_sphere_rows_and_wrong_dims(pool, tmp_path):
    record = pool["pair_embeddings"]
    emb = copied(record.embeddings_dir, tmp_path / "emb")
    assert embeddings_check(record, emb).passed
    shard = first_shard(emb)
    meta = json.loads((shard / "meta.json").read_text())
    meta["invalid_rows"]["text"] = [5]
    (shard / "meta.json").write_text(json.dumps(meta))
    overwrite_npy(shard / "text.npy", lambda a: a.__setitem__(5, 0))
    warned = embeddings_check(record, emb)
    assert not warned.passed and warned.severity == WARN, "a quarantined zero row is only a warning"
    assert warned.metadata["warning/quarantined_zero_rows"].value == 1

    overwrite_npy(shard / "text.npy", lambda a: a.__setitem__(6, 0))
    overwrite_npy(shard / "image.npy", lambda a: a.__setitem__(7, a[7] * 1.5))
    failed = embeddings_check(record, emb)
    assert failed.severity == ERROR
    assert failed.metadata["error/unlisted_zero_rows"].value == 1
    assert failed.metadata["error/not_unit_norm"].value == 1
    assert "row 7" in failed.metadata["examples"].value["not_unit_norm"][0]

    assert embeddings_check(replace(record, dim=record.dim * 2), emb).metadata["error/wrong_shape"].value > 0


# ---------------------------------------------------------------------------------------------
# clusters
# ---------------------------------------------------------------------------------------------


def test_clusters_check_flags_unaccounted_and_out_of_range_ids(pool, tmp_path):
    record, emb = pool["clusters"], pool["pair_embeddings"]
    cdir = copied(record.clusters_dir, tmp_path / "clusters")
    check = lambda: checks.every_pair_assigned(clusters=replace(record, clusters_dir=str(cdir)))  # noqa: E731
    assert check().passed
    overwrite_npy(cdir / "cluster_id.npy", lambda a: a.__setitem__(0, -1))  # unassigned, not quarantined
    overwrite_npy(cdir / "cluster_id.npy", lambda a: a.__setitem__(1, record.k))
    result = check()
    assert result.severity == ERROR and not result.passed
    assert result.metadata["error/cluster_id_out_of_range"].value == 1
    assert result.metadata["error/unaccounted_samples"].value == 1
    assert checks.cluster_findings(cdir, record.k + 1, emb.embeddings_dir).errors == {"unaccounted_samples": 1}


# ---------------------------------------------------------------------------------------------
# sample_plan
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", sorted({r.key for r in EXPERIMENTS.recipes.values() if r.seed == 0}))
def test_plan_check_passes_on_every_recipes_plan(pool, tmp_path, recipe):
    """Whatever the strategy (compositions judged by their last step), a drawn plan passes."""
    clusters = pool["clusters"]
    cpool = ClusterPool.from_artifacts(clusters.clusters_dir, clusters.k,
                                       embeddings_dir=pool["pair_embeddings"].embeddings_dir)
    try:
        plan = sampler_from_spec(EXPERIMENTS.recipes[recipe].sampler).draw(cpool, epoch=2, seed=0)
    except ValueError as e:
        pytest.skip(f"{recipe} cannot draw a plan on the tiny pool: {e}")
    findings = checks.plan_findings(write_plan(tmp_path / recipe, plan), clusters.clusters_dir, clusters.k)
    assert findings.passed, findings.summary()


def test_plan_check_flags_duplicates_multiplicity_and_starvation(pool, tmp_path):
    record, clusters = pool["sample_plan"], pool["clusters"]
    plan = copied(record.plan_dir, tmp_path / "plan")
    check = lambda: checks.plan_is_valid(sample_plan=replace(record, plan_dir=str(plan)), clusters=clusters)  # noqa: E731
    assert check().passed
    overwrite_npy(plan / "indices.npy", lambda a: a.__setitem__(2, a[1]))  # a duplicated index
    overwrite_npy(plan / "multiplicity.npy", lambda a: a.__setitem__(4, 0))
    result = check()
    assert not result.passed and result.severity == ERROR
    assert result.metadata["error/not_sorted_unique"].value == 1
    assert result.metadata["error/multiplicity_below_1"].value == 1
    assert result.metadata["error/size_differs_from_budget"].value == 1

    # drop every sample of one cluster from a fresh copy: that cluster is starved
    plan2 = copied(record.plan_dir, tmp_path / "plan2")
    cid = np.load(Path(clusters.clusters_dir) / "cluster_id.npy")
    idx, mult = np.load(plan2 / "indices.npy"), np.load(plan2 / "multiplicity.npy")
    keep = cid[idx] != cid[idx[0]]
    np.save(plan2 / "indices.npy", idx[keep])
    np.save(plan2 / "multiplicity.npy", mult[keep])
    starved = checks.plan_findings(plan2, clusters.clusters_dir, clusters.k)
    assert starved.errors["starved_clusters"] == 1
    assert checks.plan_findings(plan2, clusters.clusters_dir, clusters.k, "other-pool").errors["stale_pool"] == 1


# ---------------------------------------------------------------------------------------------
# checkpoint and eval_report (on the tiny pool's trained reference model)
# ---------------------------------------------------------------------------------------------


def epoch_checkpoint(reference_model, path: Path, last_loss: float) -> CheckpointRecord:
    """The tiny pool's trained reference model saved as an epoch checkpoint (extra.last_loss)."""
    ckpt = read_checkpoint(reference_model.checkpoint)
    ckpt["extra"]["last_loss"] = last_loss
    torch.save(ckpt, path)
    return CheckpointRecord(checkpoint=str(path), model_name=reference_model.model_name, recipe="r.s0", epoch=1,
                            pool_version="p", samples_seen=0, device_seconds=0.0, scoring_flops=0.0, global_step=0,
                            final_loss=last_loss)


def test_checkpoint_check_flags_nan_loss_and_unsafe_files(pool, tmp_path):
    ref = pool["reference_model"]
    good = checks.checkpoint_loads(checkpoint=epoch_checkpoint(ref, tmp_path / "good.pt", ref.final_loss))
    assert good.passed and good.metadata["tensors"].value > 0, good.description

    nan_loss = checks.checkpoint_loads(checkpoint=epoch_checkpoint(ref, tmp_path / "nan.pt", float("nan")))
    assert not nan_loss.passed and nan_loss.severity == ERROR
    assert nan_loss.metadata["error/last_loss_not_finite"].value == 1

    ckpt = read_checkpoint(tmp_path / "good.pt")
    torch.save({**ckpt, "extra": {"last_loss": 1.0, "hook": shutil.copytree}}, tmp_path / "unsafe.pt")
    unsafe = checks.checkpoint_findings(tmp_path / "unsafe.pt", ref.model_name)
    assert dict(unsafe.errors) == {"unloadable": 1}, "weights_only refuses a pickled function"
    assert "weights_only" in unsafe.examples["unloadable"][0]

    ckpt["state_dict"][next(iter(ckpt["state_dict"]))] = torch.full((3,), float("nan"))
    torch.save(ckpt, tmp_path / "broken.pt")
    broken = checks.checkpoint_findings(tmp_path / "broken.pt", ref.model_name)
    assert dict(broken.errors) == {"non_finite_weights": 1, "open_clip_rejects": 1}


def report_record(report_dir) -> EvalRecord:
    return EvalRecord(report_dir=str(report_dir), recipe="r.s0", epoch=1, metrics={})


@pytest.fixture(scope="module")
def report_dir(pool, tmp_path_factory):
    ref = pool["reference_model"]
    enc = load_encoder(EncoderSpec(ref.model_name, ref.checkpoint))
    report = evaluate_model(enc.model, enc.preprocess, enc.tokenizer, pool["raw_pairs"].eval_dir)
    files = report.save(tmp_path_factory.mktemp("report"))
    return next(iter(files.values())).parent  # the committed version


def test_eval_report_check_flags_out_of_range_and_unexplained_nan(report_dir, tmp_path):
    assert checks.metrics_in_unit_range(eval_report=report_record(report_dir)).passed
    bad = copied(str(report_dir), tmp_path / "bad")
    metrics = json.loads((bad / "metrics.json").read_text())
    metrics |= {"zero_shot/top1": 1.5, "zero_shot/tail": None, "compute/train_flops": 1e12}
    (bad / "metrics.json").write_text(json.dumps(metrics))
    result = checks.metrics_in_unit_range(eval_report=report_record(bad))
    assert not result.passed and result.severity == ERROR
    assert result.metadata["error/metric_out_of_range"].value == 1, "compute/* is exempt"
    assert result.metadata["error/nan_metric"].value == 1, "the tail bucket has eval images"
