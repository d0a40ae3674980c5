"""engine: ray vs engine: local (core/engine): the same artefacts byte for byte, on a real local Ray
(2 CPUs, started once for the module), for the manifest, the embeddings and the assignment; the
project's quarantine (not Ray's) decides bad samples; a dead worker is that shard's error."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

from dynamics_assets.core.cluster.kmeans import CORRUPT_IMAGE, assign, train_kmeans  # noqa: E402
from dynamics_assets.core.embed.encode import embed_shards  # noqa: E402
from dynamics_assets.core.embed.store import EmbeddingStore  # noqa: E402
from dynamics_assets.core.engine.local import LocalEngine  # noqa: E402
from dynamics_assets.core.engine.ray import RayEngine  # noqa: E402
from dynamics_assets.core.ingest.manifest import build_manifest  # noqa: E402
from dynamics_assets.core.ingest.synthetic import generate  # noqa: E402
from dynamics_assets.core.model.clip import EncoderSpec  # noqa: E402

MODEL = "dynamics-tiny-32"


@pytest.fixture(scope="module")
def ray_engine():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    engine = RayEngine(num_cpus=2)
    engine.start()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    ds = generate(root / "raw", pairs=400, seed=1, samples_per_shard=134, eval_per_concept=1)
    return sorted((ds.out_dir / "shards").glob("*.tar"))


def files(version_dir: Path) -> dict[str, bytes]:
    """Every file of a committed version but its _version.json (which records a creation time)."""
    return {str(p.relative_to(version_dir)): p.read_bytes() for p in sorted(Path(version_dir).rglob("*"))
            if p.is_file() and p.name != "_version.json"}


@pytest.fixture(scope="module")
def manifests(pool, ray_engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("manifests")
    return {name: build_manifest(pool, root / name, engine=engine)
            for name, engine in (("local", None), ("ray", ray_engine))}


def test_manifest_is_byte_identical_and_quarantine_is_the_projects(manifests):
    local, ray = manifests["local"], manifests["ray"]
    assert files(local.version_dir) == files(ray.version_dir)
    assert local.version_id == ray.version_id
    # the synthetic pool plants corrupt images: the project's reason, per sample, under Ray too
    assert ray.by_reason.get("corrupt_image", 0) >= 1 and ray.ok + ray.quarantined == ray.total == 400
    assert len(ray.read_shards) == 3


@pytest.fixture(scope="module")
def embeddings(manifests, pool, ray_engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    manifest = manifests["local"].version_dir
    return {name: embed_shards(EncoderSpec(MODEL), manifest, pool[0].parent, root / name, batch_size=32,
                               engine=engine, num_workers=workers)
            for name, engine, workers in (("local", None, 0), ("ray", ray_engine, 0), ("local2", None, 2))}


def test_embeddings_are_byte_identical_across_engines_and_worker_counts(embeddings, manifests):
    local = files(embeddings["local"].version_dir)
    assert local == files(embeddings["ray"].version_dir)
    assert local == files(embeddings["local2"].version_dir)  # 2 DataLoader workers: the same bytes
    assert embeddings["ray"].shards_embedded == 3 and embeddings["ray"].pairs_embedded == manifests["local"].ok


def test_assignment_is_byte_identical(embeddings, ray_engine, tmp_path):
    store = EmbeddingStore(embeddings["local"].version_dir)
    centroids = train_kmeans(store, 4, sample_size=len(store), niter=5, seed=0, use_gpu=False)
    out = {name: assign(store, centroids, tmp_path / name, batch_size=40, use_gpu=False, engine=engine)
           for name, engine in (("local", None), ("ray", ray_engine))}
    assert files(out["local"].version_dir) == files(out["ray"].version_dir)
    assert out["ray"].n == len(store) and out["ray"].version_id == out["local"].version_id


def test_header_manifest_lets_truncated_images_through_and_embedding_quarantines_them(
        pool, manifests, ray_engine, tmp_path):
    """decode: header accepts an image whose header parses but whose data is cut short; the
    embedding step (on Ray) records it, and the assignment quarantines it as corrupt_image."""
    header = build_manifest(pool, tmp_path / "m", decode="header", engine=ray_engine)
    full = manifests["local"]
    let_through = full.by_reason["corrupt_image"] - header.by_reason.get("corrupt_image", 0)
    assert let_through >= 1 and header.ok == full.ok + let_through
    emb = embed_shards(EncoderSpec(MODEL), header.version_dir, pool[0].parent, tmp_path / "e", batch_size=32,
                       engine=ray_engine)
    store = EmbeddingStore(emb.version_dir)
    assert sum(len(store.undecodable_rows(s)) for s in store.shards) == let_through
    centroids = train_kmeans(store, 3, sample_size=len(store), niter=3, seed=0, use_gpu=False)
    summary = assign(store, centroids, tmp_path / "c", use_gpu=False, engine=ray_engine)
    assert summary.n_corrupt_image == let_through and summary.n_zero_norm == 0
    quarantine = pq.read_table(summary.version_dir / "quarantine.parquet").to_pylist()
    assert [q["reason"] for q in quarantine].count(CORRUPT_IMAGE) == let_through
    assert (np.load(summary.version_dir / "cluster_id.npy") == -1).sum() == summary.n_quarantined


class _DieOn:
    """A task body that kills its worker process on one item (a segfaulting decoder, an OOM kill)."""

    def __init__(self, fn, name: str) -> None:
        self.fn, self.name = fn, name

    def __call__(self, item):
        if Path(item).name == self.name:
            os._exit(1)
        return self.fn(item)


class _DyingEngine:
    """The Ray engine, with the worker reading one chosen shard killed."""

    name = "ray"

    def __init__(self, engine: RayEngine, shard: str) -> None:
        self.engine, self.shard = engine, shard

    def map_shards(self, fn, items):
        return self.engine.map_shards(_DieOn(fn, self.shard), items)


def test_a_dead_worker_is_that_shards_unreadable_shard_row(pool, manifests, ray_engine, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import the tests
    dead = pool[1].name
    no_retry = RayEngine(max_retries=0)  # on the module's Ray (already started: not shut down by it)
    summary = build_manifest(pool, tmp_path / "m", engine=_DyingEngine(no_retry, dead))
    counts = {c.shard: c for c in summary.per_shard}
    assert counts[dead].rows == 1 and counts[dead].by_reason == {"unreadable_shard": 1}
    rows = pq.read_table(summary.version_dir / f"{Path(dead).stem}.parquet").to_pylist()
    assert "Error" in rows[0]["detail"] and rows[0]["key"] is None
    for other in (pool[0].name, pool[2].name):  # the other shards as the local engine reads them
        local = {c.shard: c for c in manifests["local"].per_shard}[other]
        assert counts[other].rows == local.rows


def test_engines_yield_in_input_order_with_errors_in_place(ray_engine):
    items = [3, 0, 5, 1]
    for engine in (LocalEngine(), ray_engine):
        outcomes = list(engine.map_shards(_reciprocal, items))
        assert [o.index for o in outcomes] == [0, 1, 2, 3]
        assert [o.value for o in outcomes if o.ok] == [1 / 3, 1 / 5, 1.0]
        assert isinstance(outcomes[1].error, ZeroDivisionError)
        with pytest.raises(ZeroDivisionError):
            outcomes[1].get()


def _reciprocal(x: int) -> float:
    return 1 / x


def test_repr_never_shows_the_address():
    engine = RayEngine("ray://user:secret@head:10001")
    assert "secret" not in repr(engine) and "head" not in repr(engine)


def test_dagster_raw_pairs_on_ray_writes_the_local_manifest(pool, manifests, ray_engine, tmp_path):
    """The asset with ``compute.engine: ray`` (the module's Ray is reused, not shut down)."""
    import dagster as dg

    from dynamics_assets.defs.ingest.assets import raw_pairs, raw_shards
    from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource

    resources = {"storage": StorageResource(root=str(tmp_path / "data")),
                 "gpu": GpuResource(device="cpu"), "compute": ComputeResource(engine="ray", num_cpus=2)}
    result = dg.materialize([raw_shards, raw_pairs], resources=resources, run_config={"ops": {
        "raw_shards": {"config": {"source": str(pool[0].parent)}}}})
    assert result.success
    record = result.output_for_node("raw_pairs")
    assert Path(record.manifest_dir).name == manifests["local"].version_id  # same bytes, same version id
    assert result.asset_materializations_for_node("raw_pairs")[0].metadata["engine"].value == "ray"
