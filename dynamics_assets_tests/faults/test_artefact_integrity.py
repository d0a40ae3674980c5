"""Probes over committed artefacts that do not match their record: a CURRENT that names no version
(prune must delete nothing of that artefact, nor what its versions reference, and exit non-zero),
and committed files truncated or edited in place (named when read; a shard of the incremental
embedding stage is recomputed instead of failing every rerun; a plan is refused)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynamics_assets.core.io import versions
from dynamics_assets.core.io.versions import Artefact, DamagedArtefact

ROOT = Path(__file__).resolve().parents[2]


def _commit(root: Path, files: dict[str, str], refs=None) -> Path:
    with Artefact(root).write(refs=refs) as staging:
        for name, text in files.items():
            (staging / name).write_text(text)
    return staging.version_dir


# ---------------------------------------------------------------------------------------------
# prune
# ---------------------------------------------------------------------------------------------

CURRENTS = {
    "empty": "",
    "garbage": "garbage: not a version id\n",
    "missing id": "0123456789abcdef\n",
}


@pytest.mark.parametrize("variant", list(CURRENTS))
def test_prune_with_an_unresolvable_current(tmp_path, variant, record):
    """prune over a checkpoint artefact whose CURRENT does not resolve"""
    data = tmp_path / "data"
    plans = data / "artifacts" / "plan"
    old_plan = _commit(plans, {"indices.npy": "plan one"})
    new_plan = _commit(plans, {"indices.npy": "plan two"})  # the current plan
    ckpt = data / "artifacts" / "checkpoint"
    checkpoints = [_commit(ckpt, {"model.pt": f"weights {i}" * 100}, refs={"plan": old_plan if i == 0 else new_plan})
                   for i in range(3)]
    (ckpt / ".staging" / "dead-writer").mkdir(parents=True)
    other = data / "artifacts" / "other"
    superseded = _commit(other, {"x": "old"})
    _commit(other, {"x": "new"})
    (ckpt / "CURRENT").write_text(CURRENTS[variant])

    proc = subprocess.run([sys.executable, "-m", "dynamics_assets.core.io.versions", "prune", str(data)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert all(c.is_dir() for c in checkpoints), "a version of the unresolvable artefact was deleted"
    assert old_plan.is_dir(), "a version referenced only by the unresolvable artefact's versions was deleted"
    assert (ckpt / ".staging" / "dead-writer").is_dir() and new_plan.is_dir()
    assert not superseded.exists(), "the other artefacts are still pruned"
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(ckpt) in error[0] and "nothing of it was deleted" in error[0]
    assert {"empty": "CURRENT is empty", "garbage": "names 'garbage: not a version id', which is not",
            "missing id": "names '0123456789abcdef', which is not"}[variant] in error[0]
    assert all(c.name in error[0] for c in checkpoints), "the message lists the versions to choose from"
    record(f"exit 2, 'error: …/checkpoint: {error[0].split('CURRENT ', 1)[1].split(';')[0]}'; "
           "its 3 versions, the plan version only they reference and its staging kept; other artefacts pruned")


# ---------------------------------------------------------------------------------------------
# embeddings: damaged shards of the incremental stage
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from dynamics_assets.core.ingest.manifest import build_manifest
    from dynamics_assets.core.model.clip import EncoderSpec, load_encoder
    from dynamics_assets_tests.core.train.test_training import write_pool

    tmp = tmp_path_factory.mktemp("integrity")
    _, shards_dir, _ = write_pool(tmp / "raw", [12, 10, 8])  # three tiny tar shards of coloured shapes
    manifest = build_manifest(sorted(shards_dir.glob("*.tar")), tmp / "raw_pairs")
    return manifest, shards_dir, load_encoder(EncoderSpec("dynamics-tiny-32"))


def _embed(pool, root):
    from dynamics_assets.core.embed.encode import embed_shards

    manifest, shards_dir, encoder = pool
    return embed_shards(encoder, manifest.version_dir, shards_dir, root, batch_size=32, progress=None)


def test_truncated_committed_image_npy(pool, tmp_path, record):
    """A committed image.npy of the embeddings truncated"""
    from dynamics_assets.core.embed.store import EmbeddingStore

    root = tmp_path / "embeddings"
    first = _embed(pool, root)
    damaged = first.version_dir / "shard-001" / "image.npy"
    original = damaged.read_bytes()
    os.truncate(damaged, len(original) // 2)

    with pytest.raises(DamagedArtefact) as err:  # a reader: named, not "mmap length is greater than file size"
        EmbeddingStore(root)
    message = str(err.value)
    assert str(damaged) in message and f"embeddings version {first.version_id}" in message
    assert "re-materialise embeddings" in message

    # what the failed reruns of before left: a kept staging directory of links to the damaged files
    art = Artefact(root)
    with pytest.raises(RuntimeError), art.write(base=art.current(), resume=True, keep_on_error=True):
        raise RuntimeError("mmap length is greater than file size")
    again = _embed(pool, root)  # the incremental stage adopts it: named, recomputed
    assert again.resumed
    assert len(again.damaged) == 1 and str(damaged) in again.damaged[0] and "bytes, its version recorded" in again.damaged[0]
    assert (again.shards_embedded, again.shards_skipped) == (1, 2)
    assert again.version_id == first.version_id and not versions.verify(again.version_dir)
    assert damaged.read_bytes() == original, "the same encoder gives the same bytes: the version is repaired"
    assert len(EmbeddingStore(root)) == pool[0].ok
    third = _embed(pool, root)
    assert (third.shards_embedded, third.damaged) == (0, ())
    record("reader: DamagedArtefact naming the file, the embeddings version, 're-materialise embeddings'; "
           "rerun: shard named and re-embedded (1 of 3), the version repaired (same id, verify clean)")


def test_committed_embedding_edited_in_place(pool, tmp_path, record):
    """A committed text.npy of the embeddings edited in place (same size)"""
    root = tmp_path / "embeddings"
    first = _embed(pool, root)
    edited = first.version_dir / "shard-002" / "text.npy"
    original = edited.read_bytes()
    with open(edited, "r+b") as f:  # flip the sign bit of one float16 in the data: same size, same shape
        f.seek(len(original) - 1)
        f.write(bytes([original[-1] ^ 0x80]))
    assert edited.stat().st_size == len(original)

    again = _embed(pool, root)
    assert len(again.damaged) == 1 and str(edited) in again.damaged[0] and "edited in place" in again.damaged[0]
    assert (again.shards_embedded, again.shards_skipped) == (1, 2)
    assert again.version_id == first.version_id and not versions.verify(again.version_dir)
    assert edited.read_bytes() == original
    record("detected before reuse (sha256 against _version.json), named, the shard re-embedded; "
           "the version repaired (same id, verify clean)")


# ---------------------------------------------------------------------------------------------
# plans and manifests read by non-incremental readers
# ---------------------------------------------------------------------------------------------


def test_plan_file_edited_in_place(tmp_path, record):
    """A committed plan's indices.npy edited in place (still a valid plan)"""
    from dynamics_assets.core.sample import ClusterPool, UniformSampler, write_plan
    from dynamics_assets.core.sample.plan_io import check_plan_format, read_plan

    ids = np.random.default_rng(0).integers(0, 4, 300).astype(np.int32)
    plan = UniformSampler(100, mode="exact").draw(ClusterPool.from_array(ids, 4), epoch=1, seed=0)
    version = write_plan(tmp_path / "plan", plan, pool_version="pool-a")
    path = version / "indices.npy"
    idx = np.load(path)
    gap = int(np.flatnonzero(np.diff(idx) > 1)[0])
    edited = idx.copy()
    edited[gap] += 1  # another sample, still strictly increasing
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size - edited.nbytes)
        f.write(edited.tobytes())
    check_plan_format(_plain_plan(plan, edited), path)  # the edit keeps it a valid plan

    with pytest.raises(DamagedArtefact) as err:
        read_plan(tmp_path / "plan")
    message = str(err.value)
    assert f"{path}: content differs from its recorded sha256" in message
    assert f"version {version.name} is damaged" in message and "re-materialise" in message
    record("refused on read: DamagedArtefact naming indices.npy, the plan version and 're-materialise'")


def _plain_plan(plan, indices):
    """The edited plan as the format check sees it: valid (the edit keeps it a plan)."""
    from dataclasses import replace

    return replace(plan, indices=indices)


def test_truncated_committed_manifest(pool, tmp_path, record):
    """A committed manifest parquet truncated"""
    import shutil

    from dynamics_assets.core.ingest.pool import pool_shards

    manifest = pool[0]
    copy = tmp_path / "raw_pairs"
    shutil.copytree(Path(manifest.version_dir).parent.parent, copy)
    version = copy / "versions" / manifest.version_id
    damaged = sorted(version.glob("*.parquet"))[0]
    os.truncate(damaged, damaged.stat().st_size - 10)
    with pytest.raises(DamagedArtefact) as err:
        pool_shards(copy)
    assert str(damaged) in str(err.value) and f"raw_pairs version {manifest.version_id}" in str(err.value)
    record("refused on read: DamagedArtefact naming the parquet, the raw_pairs version and 're-materialise raw_pairs'")


def test_committed_manifest_edited_in_place_is_read_again(pool, tmp_path, record):
    """A committed manifest parquet edited in place (same size), then the manifest rebuilt"""
    import shutil

    from dynamics_assets.core.ingest.manifest import build_manifest

    manifest, shards_dir, _ = pool
    copy = tmp_path / "raw_pairs"
    shutil.copytree(Path(manifest.version_dir).parent.parent, copy)
    version = copy / "versions" / manifest.version_id
    damaged = sorted(version.glob("*.parquet"))[0]
    data = bytearray(damaged.read_bytes())
    data[8] ^= 0xFF  # a byte of the first data page: the footer (and so the reuse check) still reads
    damaged.write_bytes(bytes(data))
    assert versions.verify(version) == [damaged.name]
    rebuilt = build_manifest(sorted(shards_dir.glob("*.tar")), copy)
    assert damaged.stem + ".tar" in rebuilt.read_shards, "the damaged shard's manifest is read again"
    assert len(rebuilt.reused_shards) == 2
    assert versions.verify(rebuilt.version_dir) == [], "the new version holds what its record says"
    assert rebuilt.version_id == manifest.version_id and rebuilt.ok == manifest.ok
    record(f"not reused: its sha256 differs from the version's record; {damaged.stem}.tar read again, the other "
           f"2 reused; the rebuilt version verifies clean, the same id as before the damage")
