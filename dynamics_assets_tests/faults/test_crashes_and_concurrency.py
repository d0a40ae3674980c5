"""Probes: SIGKILL in the middle of the manifest, the embedding and a plan's commit; concurrent
writers and readers of one plan partition. After each kill the next run must succeed, account
for every pair, and readers must only ever see complete committed versions."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dynamics_assets.core.io import versions
from dynamics_assets.core.ingest.synthetic import generate

ROOT = Path(__file__).resolve().parents[2]

# Run ``body`` in a child that kills itself (SIGKILL) on the n-th call of module.function.
_KILL_ON_CALL = """
import importlib, os, signal, sys
module, function, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
mod = importlib.import_module(module)
original, calls = getattr(mod, function), [0]
def wrapped(*a, **k):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*a, **k)
setattr(mod, function, wrapped)
exec(sys.argv[4])
"""


def killed_child(module: str, function: str, n: int, body: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILL_ON_CALL, module, function, str(n), body],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    ds = generate(tmp / "raw", pairs=360, samples_per_shard=90, eval_per_concept=1, seed=11)
    return tmp, ds


def test_sigkill_during_the_manifest(shards, tmp_path, record):
    """SIGKILL while the manifest reads its third shard"""
    from dynamics_assets.core.ingest.manifest import build_manifest

    _, ds = shards
    root = tmp_path / "raw_pairs"
    paths = [str(p) for p in ds.shards]
    killed_child("dynamics_assets.core.ingest.manifest", "read_shard_manifest", 3,
                 f"mod.build_manifest({paths!r}, {str(root)!r})")
    assert versions.Artefact(root).current() is None, "nothing committed by the killed run"
    summary = build_manifest(ds.shards, root)
    assert summary.total == 360 and summary.ok + summary.quarantined == 360
    assert not any((root / versions.STAGING).iterdir()), "the dead writer's staging directory is gone"
    record("nothing committed; rerun complete: 360 pairs = ok + quarantined; dead staging removed")


def test_sigkill_during_the_embedding(shards, tmp_path, record):
    """SIGKILL while the second shard is being embedded"""
    from dynamics_assets.core.embed.encode import embed_shards
    from dynamics_assets.core.ingest.manifest import build_manifest
    from dynamics_assets.core.model.spec import EncoderSpec

    tmp, ds = shards
    manifest = build_manifest(ds.shards, tmp_path / "raw_pairs")
    root = tmp_path / "embeddings"
    body = (f"from dynamics_assets.core.model.spec import EncoderSpec; "
            f"from dynamics_assets.core.embed.encode import embed_shards; "
            f"embed_shards(EncoderSpec('dynamics-tiny-32'), {str(manifest.version_dir)!r}, "
            f"{str(ds.out_dir / 'shards')!r}, {str(root)!r}, batch_size=64, device='cpu')")
    killed_child("dynamics_assets.core.embed.encode", "_write_shard", 2, body)  # killed writing the 2nd shard
    assert versions.Artefact(root).current() is None
    summary = embed_shards(EncoderSpec("dynamics-tiny-32"), manifest.version_dir, ds.out_dir / "shards", root,
                           batch_size=64, device="cpu")
    assert summary.resumed and summary.shards_skipped >= 1, "the shard finished before the kill is kept"
    assert summary.shards_embedded + summary.shards_skipped == len(ds.shards)
    from dynamics_assets.core.embed.store import EmbeddingStore
    assert len(EmbeddingStore(summary.version_dir)) == manifest.ok
    record(f"resumed: {summary.shards_skipped} shard(s) kept from the killed run, "
           f"{summary.shards_embedded} embedded; every ok pair embedded once")


def _plan_files(version_dir: Path) -> list[str]:
    return versions.verify(version_dir)


_WRITER = """
import sys
import numpy as np
from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, write_plan
root, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ids = np.random.default_rng(0).integers(0, 20, 200_000).astype(np.int32)
for epoch in range(1, n + 1):
    plan = DynamicsSampler(0.5, alpha=0.2).draw(ClusterPool.from_array(ids, 20), epoch=epoch, seed=seed)
    write_plan(root, plan, pool_version="pool-a")
"""


def test_two_writers_and_a_reader_of_one_plan_partition(tmp_path, record):
    """Two processes redraw the same plan partition while a third reads it"""
    from dynamics_assets.core.sample.plan_io import read_plan

    root = tmp_path / "sample_plan" / "r.s0" / "epoch-001"
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(seed), "6"], cwd=ROOT)
               for seed in (1, 2)]
    reads, problems = 0, []
    while any(w.poll() is None for w in writers):
        current = versions.Artefact(root).current()
        if current is not None:
            problems += _plan_files(current)
            plan = read_plan(current)  # validates the format
            meta_seed = plan.meta["seed"]
            assert meta_seed in (1, 2)
            reads += 1
        time.sleep(0.01)
    assert [w.wait() for w in writers] == [0, 0], "no writer failed: the second waits for the lock"
    assert problems == [], problems[:3]
    assert reads > 0
    assert len(versions.Artefact(root).versions()) == 12, "every draw committed whole, none lost"
    record(f"serialised by the partition lock: 12 versions committed, {reads} reads all complete and consistent")


_KILLED_COMMIT = """
import os, signal, sys
import numpy as np
from dynamics_assets.core.io import versions
from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, write_plan
root = sys.argv[1]
original = versions.Artefact._set_current
versions.Artefact._set_current = lambda self, vid: os.kill(os.getpid(), signal.SIGKILL)
ids = np.random.default_rng(0).integers(0, 20, 50_000).astype(np.int32)
write_plan(root, DynamicsSampler(0.5).draw(ClusterPool.from_array(ids, 20), epoch=2, seed=0), pool_version="pool-a")
"""


def test_sigkill_between_the_version_rename_and_current(tmp_path, record):
    """SIGKILL inside a plan's commit (version renamed, CURRENT not yet replaced)"""
    from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, write_plan
    from dynamics_assets.core.sample.plan_io import read_plan

    root = tmp_path / "plan"
    ids = np.random.default_rng(0).integers(0, 20, 50_000).astype(np.int32)
    old = write_plan(root, DynamicsSampler(0.5).draw(ClusterPool.from_array(ids, 20), epoch=1, seed=0),
                     pool_version="pool-a")
    proc = subprocess.run([sys.executable, "-c", _KILLED_COMMIT, str(root)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert versions.Artefact(root).current() == old, "readers still see the old version"
    assert read_plan(root).meta["epoch"] == 1
    new = write_plan(root, DynamicsSampler(0.5).draw(ClusterPool.from_array(ids, 20), epoch=2, seed=0),
                     pool_version="pool-a")
    assert versions.Artefact(root).current() == new and read_plan(root).meta["epoch"] == 2
    assert versions.verify(new) == []
    record("readers kept the old version; the rerun committed the new one (verified against its file hashes)")
