"""Multi-node training: torchrun launchers on two stand-in nodes (127.0.0.1, gloo, c10d rendezvous)
train exactly the weights of one node with the same world size."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.ingest.synthetic import generate
from dynamics_assets.core.io.versions import Artefact
from dynamics_assets.core.model.clip import read_checkpoint
from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, write_plan
from dynamics_assets.core.train.epoch import EpochJob, checkpoint_file
from dynamics_assets.core.train.launch import (LaunchError, Rendezvous, _wait_all, free_port, node_command,
                                               run_multinode_local, run_multinode_ray, run_under_torchrun)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    ds = generate(tmp / "raw", pairs=360, samples_per_shard=120, eval_per_concept=1, seed=3)
    summary = build_manifest(ds.shards, tmp / "manifest")
    ids = np.random.default_rng(0).integers(0, 4, summary.ok).astype(np.int32)
    plan = DynamicsSampler(0.6, alpha=0.2, mode="upsample").draw(ClusterPool.from_array(ids, 4), epoch=1, seed=0)
    return tmp, ds, write_plan(tmp / "plan-1", plan, pool_version="test-pool")


def _job(tmp: Path, ds, plan_dir: Path, name: str, **kw) -> EpochJob:
    return EpochJob(plan_dir=str(plan_dir), manifest_dir=str(tmp / "manifest"), shards_dir=str(ds.out_dir / "shards"),
                    out_checkpoint=str(tmp / name / "epoch-1"), epoch=1, n_epochs=1, batch_size=16, buffer_size=32,
                    checkpoint_every_steps=0, device="cpu", pool_version="test-pool", **kw)


def test_node_command_names_the_rendezvous():
    rdzv = Rendezvous("10.0.0.5:29400", "run-1")
    cmd = node_command("job.json", "m.json", nproc_per_node=8, nnodes=4, node_rank=2, rendezvous=rdzv)
    assert {"--nnodes=4", "--nproc-per-node=8", "--node-rank=2", "--rdzv-backend=c10d",
            "--rdzv-endpoint=10.0.0.5:29400", "--rdzv-id=run-1"} <= set(cmd)
    static = node_command("job.json", "m.json", nproc_per_node=1, nnodes=2, node_rank=1,
                          rendezvous=Rendezvous("10.0.0.5:29500", "run-2", backend="static"))
    assert {"--master-addr=10.0.0.5", "--master-port=29500", "--node-rank=1"} <= set(static)
    assert "--standalone" in node_command("job.json", "m.json", nproc_per_node=2)
    with pytest.raises(ValueError, match="rendezvous"):
        node_command("job.json", "m.json", nproc_per_node=1, nnodes=2, node_rank=0)
    with pytest.raises(ValueError, match="host:port"):
        Rendezvous("10.0.0.5", "x")


def test_two_nodes_train_the_weights_of_one_node_with_the_same_world_size(pool, monkeypatch):
    tmp, ds, plan_dir = pool
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun sets it for P > 1 only: the same math in both runs
    one = run_under_torchrun(_job(tmp, ds, plan_dir, "one-node"), 2, log=lambda _: None)
    two = run_multinode_local(_job(tmp, ds, plan_dir, "two-nodes", num_workers=1), 2, 1, log=lambda _: None,
                              timeout_s=240)
    assert one["world_size"] == two["world_size"] == 2
    assert two["ranks_in_sync"] and two["steps"] == one["steps"] >= 3
    assert two["epoch_samples"] == one["epoch_samples"]
    a = read_checkpoint(checkpoint_file(tmp / "one-node" / "epoch-1"))["state_dict"]
    b = read_checkpoint(checkpoint_file(tmp / "two-nodes" / "epoch-1"))["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)
    assert Artefact(tmp / "two-nodes" / "epoch-1").current() is not None


def test_a_failed_node_fails_the_run_and_stops_the_others(pool, tmp_path):
    tmp, ds, _ = pool
    with pytest.raises(LaunchError, match="failed") as err:
        run_multinode_local(_job(tmp, ds, tmp_path / "no-plan", "failed"), 2, 1, log=lambda _: None, timeout_s=120)
    assert "no-plan" in err.value.stderr
    # one launcher exits with an error while another would run for ten minutes: the latter is stopped
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
             for code in ("import time; time.sleep(600)", "raise SystemExit(3)")]
    codes = _wait_all(procs, timeout_s=120)
    assert codes[1] == 3 and codes[0] != 0 and time.monotonic() - started < 30
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    assert _wait_all([sleeper], timeout_s=1) != [0], "past the timeout the launcher is stopped and failed"


def test_ray_starts_one_launcher_per_node(pool, monkeypatch):
    """The Ray path: one Ray task per node (here a local Ray with one node, shared by the two
    stand-in nodes), each running its torchrun launcher; the weights equal the one-node run's."""
    ray = pytest.importorskip("ray")
    tmp, ds, plan_dir = pool
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = tmp / "one-node" / "epoch-1"
    if Artefact(one).current() is None:
        run_under_torchrun(_job(tmp, ds, plan_dir, "one-node"), 2, log=lambda _: None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with pytest.raises(LaunchError, match="2 nodes asked for"):
            run_multinode_ray(_job(tmp, ds, plan_dir, "ray-nodes"), 2, 1, log=lambda _: None)
        metrics = run_multinode_ray(_job(tmp, ds, plan_dir, "ray-nodes"), 2, 1, allow_shared_nodes=True,
                                    rdzv_port=free_port(), timeout_s=240, log=lambda _: None)
    finally:
        ray.shutdown()
    assert metrics["world_size"] == 2 and metrics["ranks_in_sync"]
    a = read_checkpoint(checkpoint_file(one))["state_dict"]
    b = read_checkpoint(checkpoint_file(tmp / "ray-nodes" / "epoch-1"))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
