"""Per-shard resumable embedding (embedding.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamics_assets.core.embed.encode import embed_shards
from dynamics_assets.core.io.versions import resolve, verify
from dynamics_assets.core.model.clip import EncoderSpec, load_encoder
from dynamics_assets.core.ingest.pool import collate, iter_pool_pairs
from dynamics_assets_tests.core.train.test_training import write_pool

MODEL = "dynamics-tiny-32"
STEMS = ["shard-000", "shard-001", "shard-002"]


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(EncoderSpec(MODEL))


@pytest.fixture
def pool(tmp_path):
    # shard-001 has only quarantined rows: an empty but valid output
    manifest_dir, shards_dir, ok_ids = write_pool(tmp_path, [20, 1, 13], quarantine_every=21)
    return manifest_dir, shards_dir, ok_ids, tmp_path / "emb"  # emb: the artefact root


def _mtimes(out_dir):
    return {p.relative_to(out_dir): p.stat().st_mtime_ns for p in out_dir.rglob("*")
            if p.is_file() and p.name != "_version.json"}


def test_embeddings_are_unit_norm_fp16_in_pool_order(encoder, pool):
    manifest_dir, shards_dir, ok_ids, out = pool
    summary = embed_shards(encoder, manifest_dir, shards_dir, out, batch_size=8)
    out = summary.version_dir
    assert out == resolve(pool[3]) and not verify(out)
    assert (summary.shards_total, summary.shards_embedded, summary.pairs_embedded) == (3, 3, 33)
    assert summary.invalid_rows == 0 and summary.dim == 128

    ids = np.concatenate([np.load(out / s / "sample_id.npy") for s in STEMS])
    assert ids.dtype == np.dtype("S32") and [i.decode() for i in ids] == ok_ids
    for stem, n in zip(STEMS, (20, 0, 13)):
        meta = json.loads((out / stem / "meta.json").read_text())
        assert meta["n"] == n and meta["dim"] == 128 and meta["encoder"] == encoder.identity
        for kind in ("image", "text"):
            x = np.load(out / stem / f"{kind}.npy")
            assert x.dtype == np.float16 and x.shape == (n, 128)
            np.testing.assert_allclose(np.linalg.norm(x.astype(np.float32), axis=1), 1.0, atol=2e-3)

    # the stored rows are the encoder's outputs for those pairs
    pairs = list(iter_pool_pairs(manifest_dir, shards_dir, indices=np.array([0, 32])))
    images, tokens = collate(pairs, encoder.preprocess, encoder.tokenizer)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(encoder.model.encode_image(images), dim=-1).numpy()
    stored = np.stack([np.load(out / "shard-000" / "image.npy")[0], np.load(out / "shard-002" / "image.npy")[12]])
    np.testing.assert_allclose(stored.astype(np.float32), expected, atol=2e-3)


def test_rerun_skips_complete_shards_and_recomputes_mismatching_ones(encoder, pool):
    manifest_dir, shards_dir, _, root = pool
    out = embed_shards(encoder, manifest_dir, shards_dir, root, batch_size=8).version_dir
    before = _mtimes(out)
    again = embed_shards(encoder, manifest_dir, shards_dir, root, batch_size=8)
    assert (again.shards_embedded, again.shards_skipped) == (0, 3)
    assert again.version_dir == out and _mtimes(out) == before  # same content: same version

    meta_rel = Path("shard-002", "meta.json")
    meta = json.loads((out / meta_rel).read_text())
    meta["encoder"]["weights"] = "sha256:another-model"
    (out / meta_rel).unlink()  # tampering with the committed version (a new inode, like any writer)
    (out / meta_rel).write_text(json.dumps(meta))
    image_before = np.load(out / "shard-002" / "image.npy")
    rerun = embed_shards(encoder, manifest_dir, shards_dir, root, batch_size=8)
    assert (rerun.shards_embedded, rerun.shards_skipped) == (1, 2)
    new = rerun.version_dir  # the same content as before the tampering: the same id, the version repaired
    assert resolve(root) == new and not verify(new)
    after = _mtimes(new)
    assert all(after[p] == t for p, t in before.items() if p.parts[0] != "shard-002")  # hardlinks
    assert after[meta_rel] != before[meta_rel]
    assert json.loads((new / meta_rel).read_text())["encoder"] == encoder.identity
    np.testing.assert_array_equal(np.load(new / "shard-002" / "image.npy"), image_before)


def test_non_finite_rows_are_zeroed_and_reported(pool):
    manifest_dir, shards_dir, _, out = pool
    encoder = load_encoder(EncoderSpec(MODEL))

    def poison_row_3(module, inputs, output):
        if output.shape[0] > 3:
            output[3] = float("nan")
        return output

    encoder.model.visual.register_forward_hook(poison_row_3)
    summary = embed_shards(encoder, manifest_dir, shards_dir, out, batch_size=64, shards=["shard-000.tar"])
    root, out = out, summary.version_dir
    assert summary.shards_total == 1 and summary.invalid_rows == 1
    meta = json.loads((out / "shard-000" / "meta.json").read_text())
    assert meta["invalid_rows"] == {"image": [3], "text": []}
    image = np.load(out / "shard-000" / "image.npy")
    assert np.all(image[3] == 0) and np.all(np.isfinite(image))
    assert not (out / "shard-002").exists()
    again = embed_shards(encoder, manifest_dir, shards_dir, root, shards=["shard-000"])
    assert again.shards_skipped == 1 and again.invalid_rows == 1  # still reported when skipped


def test_unknown_shard_names_are_rejected(encoder, pool):
    manifest_dir, shards_dir, _, out = pool
    with pytest.raises(ValueError, match="shard-009"):
        embed_shards(encoder, manifest_dir, shards_dir, out, shards=["shard-009"])


def test_rows_that_left_the_manifest_are_dropped_without_encoding(encoder, pool):
    """A shard whose ok ids became an ordered subset of its stored ids (a later shard made some of its
    rows duplicates) is rewritten from its stored rows: nothing is encoded."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    manifest_dir, shards_dir, _, root = pool
    out = embed_shards(encoder, manifest_dir, shards_dir, root, batch_size=8).version_dir
    dest = out / "shard-002"
    old_image, old_text = np.load(dest / "image.npy"), np.load(dest / "text.npy")
    old_ids = np.load(dest / "sample_id.npy")
    assert len(old_ids) == 13
    meta = json.loads((dest / "meta.json").read_text())
    meta["invalid_rows"] = {"image": [4, 5], "text": [12]}  # 5 and 12 leave, 4 becomes row 3
    (dest / "meta.json").unlink()  # tampering with the committed version (a new inode)
    (dest / "meta.json").write_text(json.dumps(meta))
    import hashlib  # ...recorded in _version.json as if committed so: reuse checks files against the record
    info = json.loads((out / "_version.json").read_text())
    info["files"]["shard-002/meta.json"] = {"sha256": hashlib.sha256((dest / "meta.json").read_bytes()).hexdigest(),
                                            "size": (dest / "meta.json").stat().st_size}
    (out / "_version.json").write_text(json.dumps(info))
    others = {p: t for p, t in _mtimes(out).items() if p.parts[0] != "shard-002"}

    # rows 2, 5 and 12 of shard-002 become duplicates of rows of a later shard
    path = manifest_dir / "shard-002.parquet"
    table = pq.read_table(path)
    dropped = pc.is_in(table["row"], pa.array([2, 5, 12], pa.int32()))
    status = pc.if_else(dropped, pa.scalar("quarantined"), table["status"])
    pq.write_table(table.set_column(table.schema.get_field_index("status"), "status", status), path)
    keep = np.array([i for i in range(13) if i not in (2, 5, 12)])

    summary = embed_shards(encoder, manifest_dir, shards_dir, root, batch_size=8)
    out, dest = summary.version_dir, summary.version_dir / "shard-002"
    assert (summary.shards_subset, summary.shards_embedded, summary.shards_skipped) == (1, 0, 2)
    assert summary.pairs_embedded == 0 and summary.invalid_rows == 1
    np.testing.assert_array_equal(np.load(dest / "sample_id.npy"), old_ids[keep])
    np.testing.assert_array_equal(np.load(dest / "image.npy"), old_image[keep])
    np.testing.assert_array_equal(np.load(dest / "text.npy"), old_text[keep])
    meta = json.loads((dest / "meta.json").read_text())
    assert meta["n"] == 10 and meta["encoder"] == encoder.identity
    assert meta["invalid_rows"] == {"image": [3], "text": []}
    assert {p: t for p, t in _mtimes(out).items() if p.parts[0] != "shard-002"} == others
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary directory left
    assert not list((root / ".staging").iterdir())

    again = embed_shards(encoder, manifest_dir, shards_dir, root, batch_size=8)
    assert (again.shards_subset, again.shards_embedded, again.shards_skipped) == (0, 0, 3)


def test_another_pool_in_the_same_root_keeps_none_of_the_old_pools_shards(encoder, pool, tmp_path):
    # the README's order: the default pool, then the user's own, in one data root
    manifest_dir, shards_dir, _, out = pool
    first = embed_shards(encoder, manifest_dir, shards_dir, out, batch_size=8)
    assert sorted(d.name for d in Path(first.version_dir).iterdir() if d.is_dir()) == STEMS
    other_manifest, other_shards, other_ids = write_pool(tmp_path / "other", [5], seed=1)
    second = embed_shards(encoder, other_manifest, other_shards, out, batch_size=8)
    assert sorted(d.name for d in Path(second.version_dir).iterdir() if d.is_dir()) == ["shard-000"]
    rows = np.load(Path(second.version_dir) / "shard-000" / "sample_id.npy")
    assert len(rows) == len(other_ids)
    verify(second.version_dir)
    assert sorted(d.name for d in Path(first.version_dir).iterdir() if d.is_dir()) == STEMS, "the old version stays"
