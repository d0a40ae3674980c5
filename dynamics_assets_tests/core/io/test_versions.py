"""Versioned, immutable artefacts (core/io/versions.py): commit, read, refs, prune, locking, crashes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dynamics_assets.core.io import versions
from dynamics_assets.core.io.versions import Artefact, LockTimeout, StalePlanError, prune, require_same_pool, resolve, verify, version_info
from dynamics_assets.core.sample import read_plan
from dynamics_assets.core.sample.base import ClusterPool
from dynamics_assets.core.sample.plan_io import write_plan
from dynamics_assets.core.sample.strategies.dynamics import DynamicsSampler

ROOT = Path(__file__).resolve().parents[3]


def commit(root: Path, files: dict[str, str], **kw) -> versions.Staging:
    with Artefact(root).write(**kw) as staging:
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text)
    return staging


def test_commit_read_current_and_content_ids(tmp_path):
    root = tmp_path / "a"
    assert Artefact(root).current() is None
    one = commit(root, {"x.txt": "one", "sub/y.txt": "why"})
    assert Artefact(root).current() == one.version_dir == root / "versions" / one.version_id
    assert resolve(root) == one.version_dir and resolve(one.version_dir) == one.version_dir
    info = version_info(one.version_dir)
    assert info["id"] == one.version_id and len(one.version_id) == 16 and info["artefact"] == "a"
    assert set(info["files"]) == {"x.txt", "sub/y.txt"} and not verify(one.version_dir)
    assert (root / "CURRENT").read_text().strip() == one.version_id
    assert not list((root / ".staging").iterdir())

    # the same content (elsewhere, or again) gives the same id; a rewrite of it reuses the version
    assert commit(tmp_path / "b", {"sub/y.txt": "why", "x.txt": "one"}).version_id == one.version_id
    again = commit(root, {"x.txt": "one", "sub/y.txt": "why"})
    assert again.reused and again.version_dir == one.version_dir

    # base: hardlinks of the previous files; an atomic replace leaves the old version untouched
    with Artefact(root).write(base=one.version_dir) as staging:
        assert os.stat(staging / "x.txt").st_ino == os.stat(one.version_dir / "x.txt").st_ino
        tmp = staging / ".x.txt.tmp"
        tmp.write_text("two")
        os.replace(tmp, staging / "x.txt")
    two = staging
    assert two.version_id != one.version_id and Artefact(root).current() == two.version_dir
    assert (one.version_dir / "x.txt").read_text() == "one" and not verify(one.version_dir)
    assert os.stat(two.version_dir / "sub/y.txt").st_ino == os.stat(one.version_dir / "sub/y.txt").st_ino
    assert {p.name for p in root.iterdir()} == {"CURRENT", "versions", ".staging", ".lock"}

    # refs change the id and are recorded relative to the version
    plain = commit(tmp_path / "c", {"z": "z"})
    pinned = commit(tmp_path / "d", {"z": "z"}, refs={"upstream": root})
    assert pinned.version_id != plain.version_id
    ref = version_info(pinned.version_dir)["refs"]["upstream"]
    assert ref["id"] == two.version_id and (pinned.version_dir / ref["path"]).resolve() == two.version_dir.resolve()
    with pytest.raises(versions.NotAVersion):
        commit(tmp_path / "e", {"z": "z"}, refs={"x": tmp_path})
    assert versions.pinned(a=root, b=tmp_path, c=None) == {"a": two.version_dir}


def test_a_failed_write_leaves_nothing_and_a_kept_one_is_resumed(tmp_path):
    root = tmp_path / "emb"
    first = commit(root, {"a": "1"})
    with pytest.raises(RuntimeError):
        with Artefact(root).write(base=first.version_dir):
            raise RuntimeError("boom")
    assert not list((root / ".staging").iterdir()) and resolve(root) == first.version_dir

    with pytest.raises(RuntimeError):
        with Artefact(root).write(base=first.version_dir, keep_on_error=True) as staging:
            (staging / "shard-0").write_text("done")
            (staging / ".shard-1.tmp").write_text("half")
            raise RuntimeError("killed in shard 1")
    assert resolve(root) == first.version_dir  # readers see the old version
    with Artefact(root).write(base=first.version_dir, resume=True) as staging:
        assert staging.resumed and (staging / "shard-0").read_text() == "done"
        assert not (staging / ".shard-1.tmp").exists()  # the dead writer's temporary is gone
        (staging / "shard-1").write_text("done")
    assert sorted(version_info(staging.version_dir)["files"]) == ["a", "shard-0", "shard-1"]
    assert not list((root / ".staging").iterdir())


def test_a_second_writer_waits_for_the_lock_and_times_out_clearly(tmp_path):
    root = tmp_path / "plan"
    with Artefact(root).write():
        with pytest.raises(LockTimeout, match=r"another writer \(pid \d+\) holds .*\.lock"):
            with Artefact(root).write(timeout=0.3):
                pass


_WRITER = textwrap.dedent("""
    import sys, time
    from dynamics_assets.core.io.versions import Artefact
    root, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(n):
        with Artefact(root).write(timeout=120) as staging:
            for name in ("indices", "multiplicity", "plan"):
                (staging / name).write_text(f"{tag} {i} {name}")
                time.sleep(0.01)
""")


def test_concurrent_writers_never_interleave_and_readers_never_see_a_mix(tmp_path):
    root = tmp_path / "plan"
    commit(root, {"indices": "init", "multiplicity": "init", "plan": "init"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(root), tag, "8"], env=env) for tag in "AB"]
    seen = set()
    while any(w.poll() is None for w in writers):
        current = Artefact(root).current()
        texts = {name: (current / name).read_text() for name in ("indices", "multiplicity", "plan")}
        tags = {t.rsplit(" ", 1)[0] for t in texts.values()}
        assert len(tags) == 1, f"a mix of two writes: {texts}"
        assert not verify(current)
        seen |= tags
    assert [w.returncode for w in writers] == [0, 0]
    assert len(Artefact(root).versions()) == 1 + 16  # every write committed whole
    assert not list((root / ".staging").iterdir())
    assert len(seen) > 1


_KILLED = textwrap.dedent("""
    import os, signal, sys, time
    from dynamics_assets.core.io import versions
    root, where = sys.argv[1], sys.argv[2]
    if where == "before_current":
        versions.Artefact._set_current = lambda self, vid: os.kill(os.getpid(), signal.SIGKILL)
    with versions.Artefact(root).write() as staging:
        (staging / "cluster_id.npy").write_text("new ids")
        if where == "half":
            print("ready", flush=True)
            time.sleep(60)
        (staging / "centroids.npy").write_text("new centroids")
""")


@pytest.mark.parametrize("where", ["half", "before_current"])
def test_a_writer_killed_mid_commit_leaves_the_old_version(tmp_path, where):
    root = tmp_path / "clusters"
    old = commit(root, {"cluster_id.npy": "old ids", "centroids.npy": "old centroids"})
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(root), where], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    if where == "half":
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    current = Artefact(root).current()
    assert current == old.version_dir and not verify(current)
    assert (current / "cluster_id.npy").read_text() == "old ids"
    if where == "half":
        assert len(list((root / ".staging").iterdir())) == 1  # left behind, never read
    else:
        assert len(Artefact(root).versions()) == 2  # committed but never made current

    new = commit(root, {"cluster_id.npy": "new ids", "centroids.npy": "new centroids"})
    assert Artefact(root).current() == new.version_dir and not verify(new.version_dir)
    assert not list((root / ".staging").iterdir())  # the dead writer's staging directory is gone


def _plan(tmp_path: Path, pool_version, seed=0) -> Path:
    ids = np.random.default_rng(0).integers(0, 4, 200).astype(np.int32)
    plan = DynamicsSampler(0.5, alpha=0.2).draw(ClusterPool.from_array(ids, 4), epoch=1, seed=seed)
    return write_plan(tmp_path / "plan" / "r.s0" / "epoch-1", plan, pool_version=pool_version)


def test_plans_record_their_pool_version_and_are_refused_on_another(tmp_path):
    pool_a = commit(tmp_path / "clusters", {"cluster_id.npy": "pool A"}).version_dir
    plan_dir = _plan(tmp_path, pool_a)
    assert read_plan(plan_dir).meta["pool_version"] == pool_a.name
    assert version_info(plan_dir)["refs"]["pool"]["id"] == pool_a.name
    assert _plan(tmp_path, pool_a) == plan_dir  # same seed, same pool: the same version
    require_same_pool(plan_dir, pool_a)
    require_same_pool(read_plan(plan_dir).meta, pool_a.name, "export")

    pool_b = commit(tmp_path / "clusters", {"cluster_id.npy": "pool B"}).version_dir
    for what in ("training", "evaluation"):
        with pytest.raises(StalePlanError) as err:
            require_same_pool(plan_dir, tmp_path / "clusters", what)
        assert f"was drawn on pool version {pool_a.name}; this {what} reads pool version {pool_b.name}" in str(err.value)
        assert str(plan_dir) in str(err.value) and "redraw the plan" in str(err.value)


def test_prune_keeps_current_and_what_it_references(tmp_path):
    data = tmp_path / "data"
    clusters = data / "artifacts" / "clusters"
    pool_a = commit(clusters, {"cluster_id.npy": "A" * 1000}).version_dir
    plan_dir = _plan(data / "artifacts", pool_a)  # still used by the current plan
    pool_b = commit(clusters, {"cluster_id.npy": "B" * 1000}).version_dir
    pool_c = commit(clusters, {"cluster_id.npy": "C" * 3000}).version_dir
    commit(clusters, {"cluster_id.npy": "D" * 10})  # current
    (clusters / ".staging" / "dead-writer").mkdir()
    ((clusters / ".staging" / "dead-writer") / "half.npy").write_text("x" * 500)

    dry = prune(data, dry_run=True)
    data_bytes = 1000 + 3000 + 500  # plus the two _version.json files
    assert data_bytes < dry.bytes_freed < data_bytes + 2048 and pool_b.exists()
    report = prune(data)
    assert set(report.removed) == {pool_b, pool_c, clusters / ".staging" / "dead-writer"}
    assert report.bytes_freed == dry.bytes_freed
    assert pool_a.exists() and plan_dir.exists() and resolve(clusters).exists()
    assert not pool_b.exists() and not pool_c.exists()

    out = subprocess.run([sys.executable, "-m", "dynamics_assets.core.io.versions", "prune", "--dry-run", str(data)],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "would remove 0 entries, 0 bytes freed; kept 3 versions" in out


def test_prune_leaves_a_busy_artefact_alone(tmp_path):
    root = tmp_path / "emb"
    old = commit(root, {"a": "1"}).version_dir
    second = commit(root, {"a": "2"}).version_dir
    with Artefact(root).write() as staging:
        (staging / "a").write_text("3")
        report = prune(tmp_path)
        assert report.skipped_locked == [root] and old.exists() and staging.path.exists()
    assert set(prune(tmp_path).removed) == {old, second}


def test_prune_deletes_nothing_it_cannot_prove_unused(tmp_path):
    data = tmp_path / "data"
    plans = data / "plan"
    only_via_ckpt = commit(plans, {"p": "one"}).version_dir
    current_plan = commit(plans, {"p": "two"}).version_dir
    ckpt = data / "ckpt"
    kept = [commit(ckpt, {"w": f"{i}"}, refs={"plan": only_via_ckpt if i == 0 else current_plan}).version_dir
            for i in range(3)]
    (ckpt / ".staging" / "dead").mkdir(parents=True)
    orphan = data / "orphan"  # versions but no CURRENT at all
    orphan_version = commit(orphan, {"o": "x"}).version_dir
    (orphan / "CURRENT").unlink()
    other = data / "other"
    old_other = commit(other, {"x": "1"}).version_dir
    commit(other, {"x": "2"})

    for text in ("", "\x00\xff garbage", "../../plan/versions/" + current_plan.name, "0123456789abcdef"):
        (ckpt / "CURRENT").write_bytes(text.encode("utf-8", "surrogateescape"))
        report = prune(data, dry_run=True)
        assert sorted(report.unresolved) == [ckpt, orphan]
        assert {v for v in kept + [only_via_ckpt, orphan_version]} <= set(report.kept)
        assert set(report.removed) == {old_other}, text
        assert any(str(ckpt) in p and "nothing of it was deleted" in p for p in report.problems)
        assert any(f"{orphan}: no CURRENT file" in p and orphan_version.name in p for p in report.problems)

    proc = subprocess.run([sys.executable, "-m", "dynamics_assets.core.io.versions", "prune", str(data)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "error: " + str(ckpt) + ": CURRENT names '0123456789abcdef'" in proc.stderr
    assert all(v.is_dir() for v in kept + [only_via_ckpt, orphan_version, current_plan])
    assert (ckpt / ".staging" / "dead").is_dir() and not old_other.exists()

    # a kept version whose _version.json does not read: its refs are unknown, so nothing is deleted
    (ckpt / "CURRENT").write_text(kept[2].name + "\n")
    (orphan / "CURRENT").write_text(orphan_version.name + "\n")
    superseded = commit(other, {"x": "3"}).version_dir
    commit(other, {"x": "4"})
    (kept[2] / "_version.json").write_text("{not json")
    report = prune(data)
    assert report.removed == [] and any("_version.json: unreadable" in p for p in report.problems)
    assert all(v.is_dir() for v in kept + [only_via_ckpt]) and superseded.is_dir()


def test_open_checked_compares_sizes_always_and_hashes_on_request(tmp_path):
    root = tmp_path / "emb"
    v = commit(root, {"a.npy": "0123456789", "sub/b.json": "{}"}).version_dir
    assert versions.open_checked(root) == v and versions.damaged_files(v) == []

    with open(v / "a.npy", "r+b") as f:  # edited in place, same size: only a hash sees it
        f.write(b"X")
    assert versions.open_checked(root) == v
    with pytest.raises(versions.DamagedArtefact) as err:
        versions.open_checked(root, hashed=["a.npy"])
    assert f"emb version {v.name} is damaged: {v / 'a.npy'}: content differs from its recorded sha256" in str(err.value)
    assert "re-materialise emb" in str(err.value)
    assert versions.open_checked(root, hashed=["sub/b.json"]) == v  # only the named files are read

    os.truncate(v / "a.npy", 4)
    (v / "sub" / "b.json").unlink()
    (v / "extra.parquet").write_text("a shard nobody committed")
    (v / ".tmp-of-a-writer").write_text("hidden: not part of any version")
    problems = versions.damaged_files(v)
    assert problems == [f"{v / 'a.npy'}: 4 bytes, its version recorded 10", f"{v / 'sub/b.json'}: missing",
                        f"{v / 'extra.parquet'}: not a file of this version (added after its commit)"]
    with pytest.raises(versions.DamagedArtefact, match="4 bytes, its version recorded 10"):
        versions.open_checked(v)
    plain = tmp_path / "fixture"  # a plain directory (no _version.json) is not checked
    plain.mkdir()
    assert versions.open_checked(plain) == plain
