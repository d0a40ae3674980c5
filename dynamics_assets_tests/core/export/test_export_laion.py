"""A LAION pool's plan out of the project as the metadata parquet its users download with img2dataset:
exactly the plan's rows (original columns, count = multiplicity), read back from the pool's files."""
from __future__ import annotations

import json
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dynamics_assets.core.cluster.curate import ClusterParams, cluster_pool
from dynamics_assets.core.export.laion import img2dataset_command, write_laion_metadata
from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets_tests.fixtures.minipools import write_datacomp_pool, write_laion_pool
from dynamics_assets.core.ingest.precomputed import derived_sample_id, ingest_precomputed
from dynamics_assets.core.io import versions
from dynamics_assets.core.io.versions import StalePlanError
from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, read_plan, write_plan
from dynamics_assets.core.sample.base import Plan


def _curate(tmp, pool_root, name):
    s = ingest_precomputed(pool_root, tmp / f"{name}_manifest", tmp / f"{name}_embeddings")
    clusters = cluster_pool(s.embeddings_dir, s.manifest_dir, tmp / f"{name}_clusters",
                            ClusterParams(k=4, sample_size=1000))
    pool = ClusterPool.from_artifacts(clusters.clusters_dir, clusters.k, embeddings_dir=s.embeddings_dir)
    plan = DynamicsSampler(300, mode="upsample").draw(pool, epoch=1, seed=0)  # multiplicities > 1
    plan_dir = write_plan(tmp / f"{name}_plan", plan, pool_version=clusters.clusters_dir)
    return s, clusters, plan_dir


@pytest.fixture(scope="module")
def laion(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("laion")
    mini = write_laion_pool(tmp / "pool", parts=3, rows_per_part=60)
    s, clusters, plan_dir = _curate(tmp, mini.root, "laion")
    return tmp, mini, s, clusters, plan_dir


def _source_rows(root):
    """sample id -> the source metadata row (as a dict), over every part."""
    out = {}
    for p in sorted((root / "metadata").glob("metadata_*.parquet")):
        for row in pq.read_table(p).to_pylist():
            if row["url"] and row["caption"]:
                out.setdefault(derived_sample_id(row["url"], row["caption"]), row)
    return out


def test_metadata_parquet_is_exactly_the_plan(laion):
    tmp, mini, s, clusters, plan_dir = laion
    plan = read_plan(plan_dir)
    assert plan.multiplicity.max() > 1  # repeats: the count column is exercised
    out = write_laion_metadata(plan_dir, s.manifest_dir, mini.root, tmp / "export", pool=clusters.clusters_dir)
    table = pq.read_table(out.path)
    source_columns = pq.read_schema(mini.root / "metadata" / "metadata_0.parquet").names
    assert table.column_names == [*source_columns, "count", "sample_id"]  # the original columns, then ours
    assert table.num_rows == out.rows == len(plan.indices) and out.samples == plan.size == sum(table["count"].to_pylist())
    ids = [mini.ok_ids[i] for i in plan.indices.tolist()]
    assert table["sample_id"].to_pylist() == ids  # pool order, exactly the planned samples
    assert table["count"].to_pylist() == plan.multiplicity.tolist()
    source = _source_rows(mini.root)
    for row in table.to_pylist():
        # the LAION id rule: sha256(url + NUL + caption)[:32]; the row is the source row unchanged
        assert derived_sample_id(row["url"], row["caption"]) == row["sample_id"]
        assert {k: v for k, v in row.items() if k not in ("count", "sample_id")} == source[row["sample_id"]]
    info = json.loads((out.version_dir / "laion_metadata.json").read_text())
    assert (info["rows"], info["samples"], info["url_col"], info["caption_col"]) == (out.rows, plan.size, "url", "caption")
    assert info["plan_version"] == plan_dir.name and info["pool_version"] == clusters.pool_version
    refs = versions.version_info(out.version_dir)["refs"]
    assert refs["plan"]["id"] == plan_dir.name and refs["manifest"]["id"] == s.manifest_version
    # the img2dataset command names this file and its columns (its real options: fire flags of download())
    argv = shlex.split(out.command)
    flags = dict(zip(argv[1::2], argv[2::2]))
    assert argv[0] == "img2dataset" and flags["--url_list"] == str(out.path) and flags["--input_format"] == "parquet"
    assert (flags["--url_col"], flags["--caption_col"]) == ("url", "caption")
    assert json.loads(flags["--save_additional_columns"]) == ["count", "sample_id"]
    again = write_laion_metadata(plan_dir, s.manifest_dir, mini.root, tmp / "export", pool=clusters.clusters_dir)
    assert again.version_id == out.version_id  # same plan, same bytes, same version


def test_a_stale_plan_or_an_edited_source_is_refused(laion, tmp_path):
    tmp, mini, s, clusters, plan_dir = laion
    with pytest.raises(StalePlanError, match="export"):
        write_laion_metadata(plan_dir, s.manifest_dir, mini.root, tmp_path / "x", pool="0123456789ab")
    # a source file edited since the ingest: an error naming it, not other rows exported silently
    edited = tmp_path / "edited"
    write_laion_pool(edited, parts=3, rows_per_part=60)
    t = pq.read_table(edited / "metadata" / "metadata_1.parquet")
    captions = t["caption"].to_pylist()
    captions = [None if c is None else c + " (edited)" for c in captions]
    pq.write_table(t.set_column(t.schema.get_field_index("caption"), "caption", pa.array(captions, pa.string())),
                   edited / "metadata" / "metadata_1.parquet")
    with pytest.raises(ValueError, match=r"metadata_1\.parquet: rows .* no longer give the ids"):
        write_laion_metadata(plan_dir, s.manifest_dir, edited, tmp_path / "y", pool=clusters.clusters_dir)


def test_an_image_pool_is_refused(tmp_path):
    import io
    import tarfile

    from PIL import Image

    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for i in range(3):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (i, 0, 0)).save(buf, "PNG")
            for ext, data in (("png", buf.getvalue()), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    m = build_manifest([tmp_path / "00000.tar"], tmp_path / "m")
    plan = Plan(np.array([0, 2], np.uint32), np.array([1, 2], np.uint16), np.array([3]), np.array([3.0]),
                np.array([3]), {"recipe": "t.s0", "epoch": 0, "strategy": "hand"})
    plan_dir = write_plan(tmp_path / "plan", plan, pool_version="poolversion1")
    with pytest.raises(ValueError, match="not the manifest of a pool of precomputed embeddings"):
        write_laion_metadata(plan_dir, m.version_dir, tmp_path, tmp_path / "out", pool="poolversion1")


def test_a_datacomp_pool_gets_its_parquet_with_the_text_caption_column(tmp_path):
    mini = write_datacomp_pool(tmp_path / "pool", parts=2, rows_per_part=60)
    s, clusters, plan_dir = _curate(tmp_path, mini.root, "dc")
    out = write_laion_metadata(plan_dir, s.manifest_dir, mini.root, tmp_path / "export",
                               pool=clusters.clusters_dir)
    table = pq.read_table(out.path)
    plan = read_plan(plan_dir)
    assert out.caption_col == "text" and "--caption_col text" in out.command
    assert table["uid"].to_pylist() == table["sample_id"].to_pylist() == [mini.ok_ids[i] for i in plan.indices.tolist()]
    assert table["count"].to_pylist() == plan.multiplicity.tolist()


def test_command_quotes_paths():
    cmd = img2dataset_command("/data/it's here/metadata.parquet", url_col="url", caption_col="caption")
    assert shlex.split(cmd)[2] == "/data/it's here/metadata.parquet"
