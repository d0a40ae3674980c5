"""One launcher (issue 19 item 1): ``launch(job, topology)`` picks run_multinode_ray (several
nodes), run_under_torchrun (one node, several processes) or run_epoch in this process (one), and
the ``checkpoint`` asset trains through it. The multi-process paths run in test_multinode.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.ingest.synthetic import generate
from dynamics_assets.core.sample import ClusterPool, write_plan
from dynamics_assets.core.sample.strategies.uniform import UniformSampler
from dynamics_assets.core.train import launch as launcher
from dynamics_assets.core.train.job import EpochJob
from dynamics_assets.core.train.launch import Topology, launch


def _job(tmp: Path) -> EpochJob:
    ds = generate(tmp / "raw", pairs=360, samples_per_shard=120, eval_per_concept=1, seed=5)
    summary = build_manifest(ds.shards, tmp / "manifest")
    plan = UniformSampler(0.3).draw(ClusterPool.from_array(np.zeros(summary.ok, np.int32), 1), epoch=1, seed=0)
    plan_dir = write_plan(tmp / "plan-1", plan, pool_version="test-pool")
    return EpochJob(plan_dir=str(plan_dir), manifest_dir=str(tmp / "manifest"), shards_dir=str(ds.out_dir / "shards"),
                    out_checkpoint=str(tmp / "ck" / "epoch-1"), epoch=1, n_epochs=1, batch_size=16, buffer_size=32,
                    checkpoint_every_steps=0, device="cpu", pool_version="test-pool")


def test_topology_names_its_launcher_and_refuses_an_empty_one():
    assert Topology().launcher == "inline" and Topology(1, 4).launcher == "torchrun"
    assert Topology(2, 1).launcher == Topology(3, 8, "ray://head:10001").launcher == "ray"
    for nodes, procs in ((0, 1), (1, 0)):
        with pytest.raises(ValueError, match="topology: need num_nodes ≥ 1 and num_processes ≥ 1"):
            Topology(nodes, procs)


def test_launch_dispatches_by_topology(monkeypatch):
    calls = []
    monkeypatch.setattr(launcher, "run_multinode_ray", lambda job, n, p, **kw: calls.append(("ray", n, p, kw)) or {})
    monkeypatch.setattr(launcher, "run_under_torchrun", lambda job, p, log: calls.append(("torchrun", p)) or {})
    monkeypatch.setattr(launcher, "run_epoch", lambda job, on_step: calls.append(("inline", on_step)) or {})
    step = object()
    launch("job", Topology(2, 4, "ray://h:1", "h:29400"), log=print)
    launch("job", Topology(1, 4))
    launch("job", Topology(), on_step=step)
    assert calls == [("ray", 2, 4, {"address": "ray://h:1", "rdzv_endpoint": "h:29400", "log": print}),
                     ("torchrun", 4), ("inline", step)]


def test_launch_with_world_size_one_trains_the_epoch_here(tmp_path):
    job = _job(tmp_path)
    steps = []
    metrics = launch(job, Topology(1, 1), on_step=lambda step, m: steps.append((step, m["loss"])))
    assert Path(metrics["checkpoint"]).is_file() and metrics["global_step"] == len(steps) > 0
    assert [s for s, _ in steps] == list(range(1, len(steps) + 1)) and all(np.isfinite(l) for _, l in steps)
    assert metrics["samples_seen"] > 0 and metrics["global_step"] == metrics.get("steps", metrics["global_step"])
