"""Re-curation on new data, through a real Dagster instance: the landing sensor (cursor, a
half-written shard, restart), per-shard ingestion, the re-curation it triggers, the plans of the
coming epochs redrawn after it, and the nightly schedule.

Sensors are evaluated with ``build_sensor_context`` against a real (temporary, SQLite) instance;
what the daemon would do with their results (add the requested dynamic partitions, launch the
requested runs) the tests do explicitly, running each requested job in process.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from dynamics_assets.core.io.versions import Artefact

from dynamics_assets.core.ingest.synthetic import generate
from dynamics_assets.definitions import defs as project_defs
from dynamics_assets.defs.partitions import raw_shard_partitions
from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource
from dynamics_assets.defs.ingest.schedules import nightly_recuration
from dynamics_assets.defs.ingest.sensors import raw_shard_sensor
from dynamics_assets.defs.sample.sensors import replan_after_recuration
from dynamics_assets.defs.tracking import MlflowResource
from dynamics_assets_tests.conftest import TINY_RUN_CONFIG

NEW_SHARD = "shard-00099.tar"  # sorts after the pool's shards


def definitions(root: Path) -> dg.Definitions:
    """The project's definitions with every resource on a temporary data root."""
    resources = {"storage": StorageResource(root=str(root)), "gpu": GpuResource(device="cpu"), "compute": ComputeResource(),
                 "io_manager": dg.FilesystemIOManager(base_dir=str(root / "io")),
                 "mlflow": MlflowResource(data_root=str(root))}
    return dg.Definitions(assets=list(project_defs.assets), asset_checks=list(project_defs.asset_checks),
                          jobs=list(project_defs.jobs), sensors=list(project_defs.sensors),
                          schedules=list(project_defs.schedules), resources=resources)


class World:
    """A curated tiny pool, an instance, and the landing sensor's cursor carried between ticks."""

    def __init__(self, tmp: Path):
        self.root = tmp / "data"
        self.defs = definitions(self.root)
        (tmp / "home").mkdir(parents=True, exist_ok=True)
        self._instance_cm = dg.instance_for_test(temp_dir=str(tmp / "home"))
        self.instance = self._instance_cm.__enter__()
        self.cursor: str | None = None

    def run(self, job: str, **kwargs) -> dg.ExecuteInProcessResult:
        result = self.defs.resolve_job_def(job).execute_in_process(instance=self.instance, **kwargs)
        assert result.success
        return result

    def tick(self) -> dg.SensorResult | dg.SkipReason:
        """One evaluation of the landing sensor, applied as the daemon would: cursor kept,
        requested partitions added. Runs are launched by the caller."""
        ctx = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs)
        result = raw_shard_sensor(ctx)
        if isinstance(result, dg.SensorResult):
            self.cursor = result.cursor
            for request in result.dynamic_partitions_requests or []:
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result

    @property
    def shards_dir(self) -> Path:
        return self.root / "raw" / "shards"

    def registered(self) -> list[str]:
        return list(self.instance.get_dynamic_partitions(raw_shard_partitions.name))


def requests(result) -> list[dg.RunRequest]:
    return list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []


def skip_text(result) -> str:
    reason = result.skip_reason if isinstance(result, dg.SensorResult) else result
    return getattr(reason, "skip_message", None) or str(reason)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recuration")
    w = World(tmp)
    assert isinstance(w.tick(), dg.SkipReason), "nothing to watch before the pool is curated"
    w.run("curate_pool", run_config=TINY_RUN_CONFIG)
    # A shard from another synthetic pool (other seed: other pairs), to land later.
    other = generate(tmp / "other", pairs=480, seed=11, samples_per_shard=160, eval_per_concept=1)
    w.new_shard_bytes = other.shards[0].read_bytes()
    yield w
    w._instance_cm.__exit__(None, None, None)


def test_pool_shards_are_registered_without_work(world):
    pool = sorted(p.name for p in world.shards_dir.glob("*.tar"))
    busy = dg.DagsterRun(job_name="curate_pool", run_id="0" * 8 + "-busy", status=dg.DagsterRunStatus.STARTED)
    world.instance.add_run(busy)
    waiting = world.tick()
    assert isinstance(waiting, dg.SkipReason) and "curate_pool in progress" in waiting.skip_message
    world.instance.delete_run(busy.run_id)
    first = world.tick()
    assert requests(first) == [] and world.registered() == []
    assert "waiting" in skip_text(first), "first sight: each shard waits one tick to settle"
    second = world.tick()
    assert requests(second) == [], "shards already embedded with the pool need no run"
    assert sorted(world.registered()) == pool
    assert {e.partition for e in second.asset_events} == set(pool)
    assert requests(world.tick()) == [] and sorted(world.registered()) == pool, "never registered twice"


def test_half_written_shard_waits_then_is_ingested_alone_then_recurated(world):
    data = world.new_shard_bytes
    target = world.shards_dir / NEW_SHARD
    target.write_bytes(data[: len(data) // 2 + 100])  # a writer half-way through
    embeddings = Artefact(world.root / "artifacts" / "pair_embeddings")

    def shard_files() -> dict[str, int]:  # shard -> inode of its image embeddings in the current version
        current = embeddings.current()
        return {d.name: (d / "image.npy").stat().st_ino for d in current.iterdir() if d.is_dir()}

    before = shard_files()

    for _ in range(3):  # first sight, then (unchanged but incomplete) twice
        result = world.tick()
        assert requests(result) == [] and NEW_SHARD not in world.registered()
    assert "tar blocks" in skip_text(result) or "end-of-archive" in skip_text(result), skip_text(result)

    target.write_bytes(data)  # the writer finishes (new size and mtime)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert requests(world.tick()) == [], "changed since the last tick: waits to settle"
    result = world.tick()
    [ingest] = requests(result)
    assert ingest.job_name == "ingest_shard" and ingest.partition_key == NEW_SHARD
    assert NEW_SHARD in world.registered()

    run = world.run("ingest_shard", partition_key=NEW_SHARD)
    meta = run.asset_materializations_for_node("shard_embeddings")[0].metadata
    assert meta["pairs"].value == 160 and meta["ok"].value + meta["quarantined"].value == 160
    assert meta["pairs_embedded"].value == meta["ok"].value > 0
    after = shard_files()
    assert {k: after[k] for k in before} == before, "old shards are not re-embedded: the new version links their files"
    assert set(after) - set(before) == {Path(NEW_SHARD).stem}

    clusters = Artefact(world.root / "artifacts" / "clusters")
    old_ids = np.load(clusters.current() / "cluster_id.npy")
    result = world.tick()
    [recurate] = requests(result)
    assert recurate.job_name == "recurate_pool"
    ops = recurate.run_config["ops"]
    assert ops["raw_shards"]["config"] == TINY_RUN_CONFIG["ops"]["raw_shards"]["config"], "same pool source"
    assert ops["clusters"]["config"]["k"] == 8 and "reference_model" not in ops
    assert not any(r.job_name == "ingest_shard" for r in requests(result)), "never ingested twice"

    run = world.run("recurate_pool", run_config=recurate.run_config)
    clusters_meta = run.asset_materializations_for_node("clusters")[0].metadata
    assert clusters_meta["refresh"].value in ("assign", "retrain")
    assert clusters_meta["new_shards"].value == 1 and clusters_meta["new_rows"].value == meta["ok"].value
    assert "drift" in clusters_meta
    materialized = {e.asset_key.to_user_string() for e in run.get_asset_materialization_events()}
    assert materialized == {"raw_shards", "raw_pairs", "pair_embeddings", "clusters", "cluster_stats",
                            "dfn_scores", "curation_targets"}, "the encoders (reference, curated) are not re-trained"
    new_ids = np.load(clusters.current() / "cluster_id.npy")
    assert len(new_ids) == len(old_ids) + meta["ok"].value
    if clusters_meta["refresh"].value == "assign":
        assert np.array_equal(new_ids[: len(old_ids)], old_ids), "kept centroids: old rows keep their cluster"
    stats = world.instance.get_latest_materialization_event(dg.AssetKey("cluster_stats"))
    assert stats.run_id == run.run_id, "statistics recomputed by the re-curation"

    quiet = world.tick()
    assert requests(quiet) == [] and json.loads(world.cursor)["ingesting"] == []


def test_shard_landing_while_the_daemon_is_down_is_found_after_restart(world):
    saved = world.cursor
    (world.shards_dir / "shard-00100.tar").write_bytes(world.new_shard_bytes)
    world.cursor = saved  # a new daemon process starts from the stored cursor
    assert requests(world.tick()) == []
    [ingest] = requests(world.tick())
    assert ingest.partition_key == "shard-00100.tar"
    world.run("ingest_shard", partition_key="shard-00100.tar")
    [recurate] = requests(world.tick())
    assert recurate.job_name == "recurate_pool"
    world.run("recurate_pool", run_config=recurate.run_config)


def test_ingestion_refuses_a_registered_shard_that_is_not_a_complete_tar(world):
    broken = world.shards_dir / "shard-00200.tar"
    broken.write_bytes(world.new_shard_bytes[:5000])
    world.instance.add_dynamic_partitions(raw_shard_partitions.name, [broken.name])
    result = world.defs.resolve_job_def("ingest_shard").execute_in_process(
        instance=world.instance, partition_key=broken.name, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("shard_embeddings")
    assert "not a complete tar" in str(failure.error.message)
    broken.unlink()
    world.instance.delete_dynamic_partition(raw_shard_partitions.name, broken.name)


def test_coming_epochs_are_replanned_after_a_recuration(world):
    key = lambda e: dg.MultiPartitionKey({"recipe": "dynamics-50.s0", "epoch": e})  # noqa: E731

    def replan_tick(cursor: str | None):
        ctx = dg.build_sensor_context(instance=world.instance, cursor=cursor, definitions=world.defs)
        return replan_after_recuration.evaluate_tick(ctx)

    first = replan_tick(None)
    assert first.run_requests == [] and "not started" in first.skip_message, "recipe not started: nothing to redraw"
    world.run("draw_epoch_plan", partition_key=key("epoch-001"))
    # Epoch 1 counts as trained (training itself is tested in test_training_assets).
    world.instance.report_runless_asset_event(dg.AssetMaterialization("checkpoint", partition=str(key("epoch-001"))))
    assert replan_tick(first.cursor).run_requests == [], "no new statistics since the last tick"
    world.run("recurate_pool", run_config={"ops": {k: v for k, v in TINY_RUN_CONFIG["ops"].items()
                                                   if k != "reference_model"}})
    tick = replan_tick(first.cursor)
    redraws = tick.run_requests
    assert sorted(r.partition_key for r in redraws) == sorted(
        str(key(e)) for e in ("epoch-002", "epoch-003")), "every epoch without a checkpoint, and only those"
    assert all(r.run_key.startswith("replan:") for r in redraws)
    assert replan_tick(tick.cursor).run_requests == [], "one redraw per re-curation"
    run = world.run("draw_epoch_plan", partition_key=redraws[0].partition_key)
    plan = run.output_for_node("sample_plan")
    clusters = world.instance.get_latest_materialization_event(dg.AssetKey("clusters"))
    version = clusters.asset_materialization.metadata["pool_version"].value
    assert plan.pool_version == version, "the coming plan is drawn on the refreshed pool"


def test_nightly_schedule_recurates_with_the_last_configuration(world, tmp_path):
    schedule = world.defs.resolve_schedule_def("nightly_recuration")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == "UTC"
    when = dt.datetime(2026, 11, 22, 2, 0, tzinfo=dt.timezone.utc)
    ctx = dg.build_schedule_context(instance=world.instance, scheduled_execution_time=when)
    request = nightly_recuration(ctx)
    assert isinstance(request, dg.RunRequest) and request.tags["dynamics/trigger"] == "schedule"
    assert request.run_config["ops"]["raw_shards"]["config"] == TINY_RUN_CONFIG["ops"]["raw_shards"]["config"]
    assert "refresh" not in request.run_config["ops"]["clusters"]["config"]
    (tmp_path / "fresh").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "fresh")) as fresh:
        skipped = nightly_recuration(dg.build_schedule_context(instance=fresh, scheduled_execution_time=when))
        assert isinstance(skipped, dg.SkipReason)
    # The schedule's request is a runnable re-curation of the same pool.
    world.run("recurate_pool", run_config=request.run_config, tags=request.tags)
    shutil.rmtree(tmp_path / "fresh", ignore_errors=True)
