"""A plan out of the project as a DataComp subset file (sorted u8,u8 uids, repeats = multiplicity)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dynamics_assets.core.cluster.curate import ClusterParams, cluster_pool
from dynamics_assets.core.export import datacomp
from dynamics_assets.core.export.datacomp import SUBSET_DTYPE, read_subset, u8_to_uids, uids_to_u8, write_subset
from dynamics_assets.core.ingest.manifest import content_sample_id
from dynamics_assets_tests.fixtures.minipools import write_datacomp_pool, write_laion_pool
from dynamics_assets.core.ingest.precomputed import ingest_precomputed
from dynamics_assets.core.io import versions
from dynamics_assets.core.io.versions import StalePlanError
from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, read_plan, write_plan


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    mini = write_datacomp_pool(tmp / "pool")
    s = ingest_precomputed(mini.root, tmp / "manifest", tmp / "embeddings")
    clusters = cluster_pool(s.embeddings_dir, s.manifest_dir, tmp / "clusters", ClusterParams(k=8, sample_size=1000))
    pool = ClusterPool.from_artifacts(clusters.clusters_dir, clusters.k, embeddings_dir=s.embeddings_dir)
    plan = DynamicsSampler(0.5).draw(pool, epoch=1, seed=0)
    plan_dir = write_plan(tmp / "plan", plan, pool_version=clusters.clusters_dir)
    repeats = DynamicsSampler(500, mode="upsample").draw(pool, epoch=1, seed=0)  # multiplicities > 1
    write_plan(tmp / "plan_upsample", repeats, pool_version=clusters.clusters_dir)
    return tmp, mini, s, clusters, plan_dir


def _expected(mini, plan_dir):
    plan = read_plan(plan_dir)
    return sorted(u for i, m in zip(plan.indices.tolist(), plan.multiplicity.tolist()) for u in [mini.ok_ids[i]] * m)


@pytest.mark.parametrize("which", ["plan", "plan_upsample"])
def test_subset_file_is_the_plan_in_datacomp_format(curated, which):
    tmp, mini, s, clusters, _ = curated
    plan_dir = versions.resolve(tmp / which)
    plan = read_plan(plan_dir)
    assert (plan.multiplicity.max() > 1) == (which == "plan_upsample")  # repeats: the expansion is exercised
    out = write_subset(plan_dir, s.manifest_dir, tmp / f"subset_{which}", pool=clusters.clusters_dir)
    subset = np.load(out.path)
    assert subset.dtype == np.dtype("u8,u8")  # exactly DataComp resharder's assertion (fields f0, f1)
    assert subset.dtype == SUBSET_DTYPE and subset.dtype.names == ("f0", "f1")
    assert np.array_equal(subset, np.sort(subset, order=("f0", "f1")))
    assert len(subset) == out.rows == plan.size and out.distinct == len(plan.indices)
    uids = u8_to_uids(subset)
    assert uids == _expected(mini, plan_dir)  # the planted pool's uids at the plan's indices, k times each
    assert set(uids) <= set(mini.ok_ids)  # quarantined (planted) rows are never listed
    # DataComp's own conversion of a uid gives the same pair
    u = uids[0]
    assert (int(u[:16], 16), int(u[16:], 16)) == (int(subset[0]["f0"]), int(subset[0]["f1"]))
    info = json.loads((out.version_dir / "subset.json").read_text())
    assert info["plan_version"] == plan_dir.name and info["pool_version"] == clusters.pool_version
    refs = versions.version_info(out.version_dir)["refs"]
    assert refs["plan"]["id"] == plan_dir.name and refs["manifest"]["id"] == s.manifest_version
    assert np.array_equal(read_subset(tmp / f"subset_{which}"), subset)  # the root reads its current version


def test_buckets_and_part_streaming_give_the_same_file(curated, monkeypatch):
    tmp, mini, s, clusters, _ = curated
    plan_dir = versions.resolve(tmp / "plan_upsample")
    one = write_subset(plan_dir, s.manifest_dir, tmp / "sub1", pool=clusters.clusters_dir)
    opened = []
    real = datacomp.ok_sample_ids
    monkeypatch.setattr(datacomp, "ok_sample_ids", lambda shard: opened.append(shard.name) or real(shard))
    many = write_subset(plan_dir, s.manifest_dir, tmp / "sub2", pool=clusters.clusters_dir, bucket_rows=10)
    assert opened == mini.parts  # one part at a time, in pool order, each once
    assert np.array_equal(np.load(one.path), np.load(many.path))
    assert one.path.read_bytes() == many.path.read_bytes()


def test_stale_plan_and_wrong_manifest_are_refused(curated):
    tmp, mini, s, clusters, plan_dir = curated
    with pytest.raises(StalePlanError, match="export"):
        write_subset(plan_dir, s.manifest_dir, tmp / "x", pool="0123456789ab")
    other = ingest_precomputed(write_laion_pool(tmp / "laion").root, tmp / "m2", tmp / "e2")
    with pytest.raises(ValueError, match="built from raw_pairs version"):
        write_subset(plan_dir, other.manifest_dir, tmp / "x", pool=clusters.clusters_dir)


def test_read_subset_refuses_unsorted_or_wrong_dtype(tmp_path):
    a = uids_to_u8(np.array([b"f" * 32, b"0" * 31 + b"1"], dtype="S32"))
    np.save(tmp_path / "unsorted.npy", a)
    with pytest.raises(ValueError, match="not sorted"):
        read_subset(tmp_path / "unsorted.npy")
    np.save(tmp_path / "wrong.npy", np.zeros(2, dtype=[("u0", "<u4"), ("u1", "<u4")]))
    with pytest.raises(ValueError, match="dtype"):
        read_subset(tmp_path / "wrong.npy")
    # same bytes, other field names: DataComp's resharder asserts dtype == np.dtype("u8,u8"), so refused
    np.save(tmp_path / "named.npy", np.zeros(2, dtype=[("u0", "<u8"), ("u1", "<u8")]))
    with pytest.raises(ValueError, match="u8,u8"):
        read_subset(tmp_path / "named.npy")


def test_content_hash_ids_are_128_bit_uids():
    sid = content_sample_id(b"\x89PNG...", "a caption")
    pair = uids_to_u8(np.array([sid.encode()], dtype="S32"))[0]
    assert f"{int(pair['f0']):016x}{int(pair['f1']):016x}" == sid
