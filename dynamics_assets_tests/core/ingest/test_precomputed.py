"""Pools with precomputed embeddings (DataComp CommonPool, LAION): ingest into manifest + embeddings
versions that clustering, cluster stats and the samplers read unchanged."""
from __future__ import annotations

import contextlib
import io
import json
import math
import tarfile
import tempfile

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dynamics_assets.core.cluster.curate import ClusterParams, cluster_pool
from dynamics_assets.core.cluster.refresh import encoder_identity
from dynamics_assets.core.cluster.stats import compute_cluster_stats
from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.ingest import precomputed
from dynamics_assets.core.ingest.manifest import OK, REASONS, manifest_files, manifest_info, ok_rows, pool_counts
from dynamics_assets_tests.fixtures.minipools import write_datacomp_pool, write_laion_pool
from dynamics_assets.core.ingest.pool import pool_shards
from dynamics_assets.core.ingest.precomputed import (PoolPartsError, derived_sample_id, detect_layout, has_images,
                                                     ingest_precomputed, join_images)
from dynamics_assets.core.io import versions
from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, read_plan, write_plan

WRITERS = {"datacomp": write_datacomp_pool, "laion": write_laion_pool}


def _manifest_rows(manifest_dir):
    return [r for _, p in manifest_files(manifest_dir) for r in pq.read_table(p).to_pylist()]


def _store_ids(store):
    return np.concatenate([np.load(store.sample_id_path(s)) for s in store.shards]).astype(str).tolist()


@pytest.mark.parametrize("layout", ["datacomp", "laion"])
def test_ingest_accounts_for_every_row_and_feeds_the_stages(tmp_path, layout):
    mini = WRITERS[layout](tmp_path / "pool")
    s = ingest_precomputed(mini.root, tmp_path / "manifest", tmp_path / "embeddings")
    assert s.layout == layout
    # every input row is one manifest row: kept + quarantined, with exactly the planted reasons
    rows = _manifest_rows(s.manifest_dir)
    assert len(rows) == s.total == mini.rows
    assert s.ok + s.quarantined == mini.rows
    quarantined = {r["reason"]: [] for r in rows if r["status"] != OK}
    for r in rows:
        if r["status"] != OK:
            quarantined[r["reason"]].append((r["shard"], r["row"]))
    assert quarantined == mini.planted
    assert s.by_reason == {reason: len(where) for reason, where in mini.planted.items()}
    assert all(r["reason"] in REASONS for r in rows if r["reason"])
    dup = next(r for r in rows if r["reason"] == "duplicate_sample_id")
    assert dup["duplicate_of"] == dup["sample_id"] and dup["sample_id"] in mini.ok_ids
    # no images: marked for training, members / offsets null
    assert not has_images(s.manifest_dir)
    assert all(r["image_member"] is None and r["image_offset"] is None for r in rows)
    assert {manifest_info(p)["source"] for _, p in manifest_files(s.manifest_dir)} == {"precomputed"}
    # the existing manifest readers
    assert [sh.name for sh in pool_shards(s.manifest_dir)] == mini.parts
    assert sum(n for _, n in pool_counts(s.manifest_dir)) == s.ok == len(mini.ok_ids)
    assert [sid for t in ok_rows(s.manifest_dir) for sid in t["sample_id"].to_pylist()] == mini.ok_ids
    summary = json.loads((s.manifest_dir / "_summary.json").read_text())
    assert summary["total"] == mini.rows and summary["layout"] == layout
    # the embedding store: pool order, aligned with the manifest's ok rows, normalised fp16
    assert versions.version_info(s.embeddings_dir)["refs"]["manifest"]["id"] == s.manifest_version
    for kind in ("image", "text"):
        store = EmbeddingStore(s.embeddings_dir, kind)
        assert store.shards == mini.parts and len(store) == s.ok and store.dim == 512
        assert _store_ids(store) == mini.ok_ids
        x = store.take(np.arange(len(store)))
        assert np.load(store.embedding_path(store.shards[0]), mmap_mode="r").dtype == np.float16
        assert np.isfinite(x).all() and np.allclose(np.linalg.norm(x, axis=1), 1, atol=2e-3)
    assert encoder_identity(EmbeddingStore(s.embeddings_dir)) == s.encoder
    assert s.encoder["model_name"] == "ViT-B-32" and s.encoder["source"].startswith(f"precomputed:{layout}")
    # downstream, unchanged: clusters, stats, a DynamiCS plan
    clusters = cluster_pool(s.embeddings_dir, s.manifest_dir, tmp_path / "clusters",
                            ClusterParams(k=8, sample_size=1000, niter=10))
    assert clusters.n == s.ok
    stats = compute_cluster_stats(clusters.clusters_dir, None, s.manifest_dir, tmp_path / "stats")
    assert stats.table.num_rows == 8 and sum(stats.table["size"].to_pylist()) == s.ok
    # k-means finds the planted structure (4 concepts, k = 8: a concept may be split, never mixed)
    # and the stats name each cluster's concept
    cid = np.load(clusters.clusters_dir / "cluster_id.npy")
    for c in range(8):
        members = [mini.concept[i] for i, k in zip(mini.ok_ids, cid) if k == c]
        if members:
            top = max(set(members), key=members.count)
            assert members.count(top) >= 0.9 * len(members)
            assert top.split()[0] in stats.table["top_words"][c].as_py()
    cpool = ClusterPool.from_artifacts(clusters.clusters_dir, clusters.k, embeddings_dir=s.embeddings_dir)
    plan = DynamicsSampler(0.5).draw(cpool, epoch=1, seed=0)
    plan_dir = write_plan(tmp_path / "plan", plan, pool_version=clusters.clusters_dir)
    assert read_plan(plan_dir).meta["pool_version"] == clusters.pool_version


def test_l14_pair_is_chosen_by_parameter(tmp_path):
    mini = write_datacomp_pool(tmp_path / "pool", parts=2, rows_per_part=60)
    s = ingest_precomputed(f"datacomp:{mini.root}", tmp_path / "m", tmp_path / "e", embedding="l14")
    assert s.dim == 768 and s.encoder["model_name"] == "ViT-L-14" and s.encoder["source"].endswith("/l14")
    assert EmbeddingStore(s.embeddings_dir).dim == 768
    with pytest.raises(ValueError, match="embedding must be one of"):
        ingest_precomputed(mini.root, tmp_path / "m2", tmp_path / "e2", embedding="h14")


def test_layout_detection_and_refusal(tmp_path):
    dc = write_datacomp_pool(tmp_path / "dc", parts=2, rows_per_part=20)
    la = write_laion_pool(tmp_path / "la", parts=2, rows_per_part=20)
    assert detect_layout(dc.root).layout == "datacomp"  # the folder above metadata/
    assert detect_layout(dc.root / "metadata").layout == "datacomp"
    assert detect_layout(la.root).layout == "laion"
    assert [p.name for p in detect_layout(la.root).parts] == ["metadata_000000", "metadata_000001"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a DataComp pool.*LAION"):
        detect_layout(tmp_path / "other")
    with pytest.raises(ValueError, match="as laion"):
        detect_layout(f"laion:{dc.root}")


def test_laion_parts_in_numeric_order_and_uid_column_wins(tmp_path):
    mini = write_laion_pool(tmp_path / "pool", parts=2, rows_per_part=50)
    for n in (2, 10):  # metadata_10 after metadata_2 (numeric, not string order)
        for d, a in (("img_emb", "img"), ("text_emb", "text")):
            np.save(tmp_path / "pool" / d / f"{a}_emb_{n}.npy", np.load(tmp_path / "pool" / d / f"{a}_emb_0.npy"))
        t = pq.read_table(tmp_path / "pool" / "metadata" / "metadata_0.parquet")
        t = t.append_column("uid", pa.array([f"{n:02d}{i:030x}" for i in range(t.num_rows)]))
        pq.write_table(t, tmp_path / "pool" / "metadata" / f"metadata_{n}.parquet")
    s = ingest_precomputed(mini.root, tmp_path / "m", tmp_path / "e")
    assert [p.shard for p in s.parts] == ["metadata_000000", "metadata_000001", "metadata_000002", "metadata_000010"]
    rows = [r for r in _manifest_rows(s.manifest_dir) if r["shard"] == "metadata_000010"]
    assert rows[0]["sample_id"] == f"10{0:030x}"  # from the uid column, not from url + caption
    first = [r for r in _manifest_rows(s.manifest_dir) if r["shard"] == "metadata_000000"][0]
    meta = pq.read_table(tmp_path / "pool" / "metadata" / "metadata_0.parquet").slice(0, 1).to_pylist()[0]
    assert first["sample_id"] == derived_sample_id(meta["url"], meta["caption"])  # no uid column: url + caption
    assert json.loads(first["meta_json"])["url"] == meta["url"]
    assert first["key"] == "000000000"


def test_unreadable_or_misaligned_part_is_quarantined_whole(tmp_path):
    mini = write_datacomp_pool(tmp_path / "pool", parts=3, rows_per_part=40)
    names = mini.parts
    (tmp_path / "pool" / "metadata" / f"{names[1]}.npz").write_bytes(b"PK\x03\x04 not a zip")  # unreadable
    npz = dict(np.load(tmp_path / "pool" / "metadata" / f"{names[2]}.npz"))
    np.savez(tmp_path / "pool" / "metadata" / f"{names[2]}.npz", **{k: v[:-1] for k, v in npz.items()})  # one row short
    s = ingest_precomputed(mini.root, tmp_path / "m", tmp_path / "e")
    assert s.total == 120 and [p.ok for p in s.parts][1:] == [0, 0]
    assert s.by_reason["unreadable_part"] == 80
    details = {r["shard"]: r["detail"] for r in _manifest_rows(s.manifest_dir) if r["reason"] == "unreadable_part"}
    assert "unreadable" in details[names[1]] and "not row-aligned" in details[names[2]]
    store = EmbeddingStore(s.embeddings_dir)
    assert list(store.counts) == [p.ok for p in s.parts] and len(store) == s.ok


def _clip_retrieval_names(root, parts: int, folders=("img_emb", "text_emb", "metadata")) -> None:
    """Rename a ``write_laion_pool`` pool's files as clip-retrieval's writer names them:
    ``str(n).zfill(int(math.log10(parts)) + 1)`` (clip_inference/writer.py), padded from 10 parts on."""
    width = int(math.log10(parts)) + 1
    for folder in folders:
        for p in sorted((root / folder).iterdir()):
            stem, ext = p.name.split(".", 1)
            prefix, n = stem.rsplit("_", 1)
            p.rename(p.with_name(f"{prefix}_{n.zfill(width)}.{ext}"))


@pytest.mark.parametrize("parts,padded", [(1, True), (10, True), (12, True), (12, False), (12, "mixed"), (101, True)])
def test_laion_parts_are_found_by_listing_padded_or_not(tmp_path, parts, padded):
    """clip-retrieval pads part numbers from 10 parts on (img_emb_00.npy ...); every part is read,
    whatever the padding (even padded in one folder and not in another), in numeric order."""
    rows = 12
    mini = write_laion_pool(tmp_path / "pool", parts=parts, rows_per_part=rows, dim=16)
    if padded:
        _clip_retrieval_names(mini.root, parts, ("img_emb", "metadata") if padded == "mixed" else
                              ("img_emb", "text_emb", "metadata"))
    listed = sorted((mini.root / "img_emb").iterdir())
    if padded is True and parts >= 10:
        assert listed[0].name == "img_emb_" + "0" * (int(math.log10(parts)) + 1) + ".npy"  # the layout under test
    source = detect_layout(mini.root)
    assert [p.name for p in source.parts] == mini.parts == [f"metadata_{n:06d}" for n in range(parts)]
    for n, part in enumerate(source.parts):  # each part's three files are the same N
        assert {int(f.stem.rsplit("_", 1)[1]) for f in (part.metadata, part.image, part.text)} == {n}
    s = ingest_precomputed(mini.root, tmp_path / "m", tmp_path / "e")
    assert s.total == parts * rows and "unreadable_part" not in s.by_reason  # every row read
    assert s.ok == len(mini.ok_ids) and s.by_reason == {r: len(w) for r, w in mini.planted.items() if w}
    assert [sid for t in ok_rows(s.manifest_dir) for sid in t["sample_id"].to_pylist()] == mini.ok_ids
    assert _store_ids(EmbeddingStore(s.embeddings_dir)) == mini.ok_ids


def test_two_files_with_the_same_part_number_are_refused_naming_both(tmp_path):
    mini = write_laion_pool(tmp_path / "pool", parts=2, rows_per_part=12)
    meta = mini.root / "metadata"
    (meta / "metadata_01.parquet").write_bytes((meta / "metadata_1.parquet").read_bytes())
    with pytest.raises(PoolPartsError, match=r"same part number: metadata_01\.parquet and metadata_1\.parquet"):
        ingest_precomputed(mini.root, tmp_path / "m", tmp_path / "e")
    (meta / "metadata_01.parquet").unlink()
    (mini.root / "img_emb" / "img_emb_000.npy").write_bytes((mini.root / "img_emb" / "img_emb_0.npy").read_bytes())
    with pytest.raises(PoolPartsError, match=r"img_emb_0\.npy and img_emb_000\.npy"):
        detect_layout(mini.root)
    (mini.root / "img_emb" / "img_emb_000.npy").unlink()
    (meta / "metadata_extra.parquet").write_bytes((meta / "metadata_1.parquet").read_bytes())
    with pytest.raises(PoolPartsError, match=r"metadata_extra\.parquet not named metadata_N\.parquet"):
        detect_layout(mini.root)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").rglob("*.parquet"))  # nothing committed


@pytest.mark.parametrize("remove,message", [
    ("text_emb/text_emb_1.npy", r"text_emb lacks part 1 \(present: img_emb/img_emb_1\.npy, metadata/metadata_1\.parquet\)"),
    ("metadata/metadata_2.parquet", r"metadata lacks part 2 \(present: img_emb/img_emb_2\.npy, text_emb/text_emb_2\.npy\)"),
    ("img_emb/img_emb_0.npy", r"img_emb lacks part 0 "),
])
def test_a_missing_laion_file_is_an_error_naming_the_differing_parts(tmp_path, remove, message):
    """Not a quarantine of the part's rows: the three folders must list the same parts."""
    mini = write_laion_pool(tmp_path / "pool", parts=3, rows_per_part=12)
    (mini.root / remove).unlink()
    with pytest.raises(PoolPartsError, match="img_emb, text_emb and metadata must list the same parts: " + message):
        ingest_precomputed(mini.root, tmp_path / "m", tmp_path / "e")
    assert not isinstance(PoolPartsError("x"), ValueError)  # auto-detection does not take it for "not a pool"


def test_a_missing_datacomp_file_is_an_error_naming_it(tmp_path):
    mini = write_datacomp_pool(tmp_path / "pool", parts=3, rows_per_part=20)
    folder = mini.root / "metadata"
    (folder / f"{mini.parts[1]}.npz").unlink()
    with pytest.raises(PoolPartsError, match=rf"{mini.parts[1]}\.parquet has no \.npz"):
        ingest_precomputed(mini.root, tmp_path / "m", tmp_path / "e")
    (folder / f"{mini.parts[1]}.parquet").unlink()
    (folder / f"{mini.parts[2]}.parquet").unlink()  # an npz alone is not left out silently either
    with pytest.raises(PoolPartsError, match=rf"{mini.parts[2]}\.npz has no \.parquet"):
        detect_layout(mini.root)


def test_duckdb_settings_are_not_pasted_into_sql(tmp_path, monkeypatch):
    """The spill folder and memory limit reach DuckDB as settings, not SQL text: a temporary
    folder with a quote in its name works, and a limit carrying SQL is refused as a bad value."""
    quoted = tmp_path / "it's tmp"
    quoted.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(quoted))
    mini = write_laion_pool(tmp_path / "pool", parts=2, rows_per_part=12)
    s = ingest_precomputed(mini.root, tmp_path / "m", tmp_path / "e")
    assert s.by_reason["duplicate_sample_id"] == 1  # the duplicate pass ran with the quoted spill folder
    with pytest.raises(duckdb.Error, match="memory"):
        ingest_precomputed(mini.root, tmp_path / "m2", tmp_path / "e2", memory_limit="1GB'; SET threads = 1; --")


def test_reads_part_by_part(tmp_path, monkeypatch):
    """One part's embeddings are open at a time, in part order (the pool is never stacked)."""
    mini = write_laion_pool(tmp_path / "pool", parts=3, rows_per_part=40)
    opened, open_now = [], []
    real = precomputed.open_embeddings

    @contextlib.contextmanager
    def spy(part, *args, **kwargs):
        assert not open_now, f"{part.name} opened while {open_now} is open"
        open_now.append(part.name)
        opened.append(part.name)
        try:
            with real(part, *args, **kwargs) as emb:
                assert isinstance(emb.image, np.memmap)  # LAION .npy: memory-mapped, not loaded
                yield emb
        finally:
            open_now.remove(part.name)

    monkeypatch.setattr(precomputed, "open_embeddings", spy)
    monkeypatch.setattr(precomputed, "CHUNK_ROWS", 16)  # several chunks per part
    s = ingest_precomputed(mini.root, tmp_path / "m", tmp_path / "e")
    assert opened == mini.parts and s.total == 120
    assert _store_ids(EmbeddingStore(s.embeddings_dir)) == mini.ok_ids


def test_rerun_gives_the_same_versions(tmp_path):
    mini = write_datacomp_pool(tmp_path / "pool", parts=2, rows_per_part=30)
    a = ingest_precomputed(mini.root, tmp_path / "m", tmp_path / "e")
    b = ingest_precomputed(mini.root, tmp_path / "m", tmp_path / "e")
    assert (a.manifest_version, a.embeddings_version) == (b.manifest_version, b.embeddings_version)


def _tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _png(i):
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_join_images_reports_uids_without_images(tmp_path):
    mini = write_datacomp_pool(tmp_path / "pool", parts=2, rows_per_part=30)
    s = ingest_precomputed(mini.root, tmp_path / "m", tmp_path / "e")
    have = mini.ok_ids[::3]
    samples = [(f"{i:09d}", {"png": _png(i), "txt": f"caption {i}".encode(), "json": json.dumps({"uid": uid}).encode()})
               for i, uid in enumerate(have)]
    samples.append(("999999999", {"png": _png(255), "txt": b"x", "json": json.dumps({"uid": "f" * 32}).encode()}))
    _tar(tmp_path / "00000.tar", samples)
    j = join_images(s.manifest_dir, [tmp_path / "00000.tar"], shards_manifest_root=tmp_path / "shards_m", sample=5)
    assert (j.pool_ok, j.with_image, j.without_image) == (s.ok, len(have), s.ok - len(have))
    assert j.missing_sample == [u for u in mini.ok_ids if u not in set(have)][:5]
    assert j.shard_samples == len(have) + 1 and j.not_in_pool == 1
    assert j.shards_manifest_dir is not None
