"""Spherical k-means over the embedding pool with faiss: train, merge near-duplicate centroids, assign.

Algorithm (DynamiCS, after SemDeDup, Abbas et al. 2023): embeddings e_i are L2-normalised and
clustered with spherical k-means, i.e. Lloyd iterations whose centroids are re-normalised each
step, ``mu_c = sum_{i in c} e_i / ||sum_{i in c} e_i||``, trained with ``faiss.Kmeans(...,
spherical=True)`` on an explicit seeded sample of the pool. Near-duplicate centroids
(``cos(mu_i, mu_j) >= 0.70``) are merged greedily. Every embedding is then assigned to
``argmax_c <e_i, mu_c>`` (faiss ``IndexFlatIP``, the training metric) and its cosine distance
``1 - <e_i, mu_c>`` is kept for the statistics stage.

Storage read (one directory per shard, shards in name order = pool order)::

    <emb_dir>/<shard>/image.npy      float16 (n, D), L2-normalised rows
    <emb_dir>/<shard>/text.npy       float16 (n, D)
    <emb_dir>/<shard>/sample_id.npy  |S32 (n,)

Every .npy file is read through a memory map that is re-opened per batch, so resident memory is
one batch whatever the pool size N. Rows that are non-finite or have zero norm are never
assigned: they get ``cluster_id = -1`` and a quarantine record with the reason.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, NamedTuple

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.engine import Engine, resolve as resolve_engine
from dynamics_assets.core.io.arrays import npy_chunks
from dynamics_assets.core.io import versions
from dynamics_assets.core.io.atomic import save_npy

log = logging.getLogger(__name__)

UseGpu = bool | Literal["auto"]
InitMethod = Literal["random", "kmeans++"]
_FAISS_INIT = {
    "random": faiss.ClusteringInitMethod_RANDOM,  # faiss default, as in DynamiCS / SemDeDup
    "kmeans++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
}

NON_FINITE = "non_finite_embedding"
ZERO_NORM = "zero_norm_embedding"
HELD_OUT = "held_out"  # evaluation's held-out slice of the pool (evaluate/holdout.py): in no plan
CORRUPT_IMAGE = "corrupt_image"  # the image did not decode when embedded (a manifest made with decode: header)

ASSIGNMENT_SCHEMA = pa.schema(
    [
        ("sample_index", pa.int64()),
        ("sample_id", pa.string()),
        ("shard", pa.string()),
        ("cluster_id", pa.int32()),
        ("distance", pa.float32()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [("sample_index", pa.int64()), ("sample_id", pa.string()), ("reason", pa.string())]
)


def _resolve_gpu(use_gpu: UseGpu) -> bool:
    if use_gpu not in (True, False, "auto"):
        raise ValueError(f"use_gpu must be True, False or 'auto', got {use_gpu!r}")
    n_gpus = faiss.get_num_gpus()
    if use_gpu is True and n_gpus == 0:
        raise RuntimeError("use_gpu=True but faiss sees no GPU (faiss.get_num_gpus() == 0)")
    return n_gpus > 0 if use_gpu == "auto" else bool(use_gpu)


def _normalised_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 L2-normalised copy of ``rows`` and the masks of non-finite and of zero-norm rows.

    A row is non-finite when its float32 norm is not finite (a NaN/inf entry, or an overflow).
    Flagged rows are zeros in the copy.
    """
    x = np.array(rows, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    non_finite = ~np.isfinite(norms)
    zero_norm = norms == 0
    invalid = non_finite | zero_norm
    x /= np.where(invalid, 1.0, norms)[:, None]
    x[invalid] = 0.0
    return x, non_finite, zero_norm


def _l2_normalised(centroids: np.ndarray, dim: int) -> np.ndarray:
    """Validated float32 unit-norm copy of a (k, dim) centroid matrix."""
    c = np.asarray(centroids)
    if c.ndim != 2 or c.shape[0] == 0:
        raise ValueError(f"centroids must be a non-empty 2-D array, got shape {c.shape}")
    if c.shape[1] != dim:
        raise ValueError(f"centroids have dimension {c.shape[1]}, expected {dim}")
    x, non_finite, zero_norm = _normalised_rows(c)
    if (non_finite | zero_norm).any():
        raise ValueError(f"centroids {np.flatnonzero(non_finite | zero_norm)[:5].tolist()} are non-finite or zero")
    return x


def _training_sample_size(n: int, k: int, sample_size: int, max_points_per_centroid: int) -> int:
    """``min(sample_size, max_points_per_centroid * k, n)``. A pool smaller than ``sample_size`` is
    simply read whole (no message); the warning is only for a cap that trains on fewer rows than
    both the asked sample and the pool hold."""
    cap = max_points_per_centroid * k
    if min(sample_size, n) > cap:
        log.warning(
            "k-means sample_size=%d on %d rows exceeds max_points_per_centroid*k=%d; training on %d rows",
            sample_size, n, cap, cap,
        )
    return min(sample_size, cap, n)


def train_kmeans(
    store: EmbeddingStore,
    k: int,
    *,
    sample_size: int,
    niter: int = 10,
    seed: int = 0,
    use_gpu: UseGpu = "auto",
    max_points_per_centroid: int = 1000,
    init: InitMethod = "random",
) -> np.ndarray:
    """Train spherical k-means on a seeded uniform sample of the pool; (k, D) float32 unit centroids.

    The sample is ``min(sample_size, max_points_per_centroid * k, N)`` distinct rows (sorted indices,
    read shard by shard); non-finite and zero-norm rows are dropped from it with a warning.
    ``init="kmeans++"`` seeds with D^2 sampling instead of faiss' default uniform pick, which avoids
    the local minima random init falls into when there are few, well separated clusters.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gpu = _resolve_gpu(use_gpu)
    n_sample = _training_sample_size(len(store), k, sample_size, max_points_per_centroid)
    indices = np.sort(np.random.default_rng(seed).choice(len(store), size=n_sample, replace=False))
    x, non_finite, zero_norm = _normalised_rows(store.take(indices))
    if (bad := non_finite | zero_norm).any():
        log.warning(
            "k-means sample: dropping %d non-finite and %d zero-norm rows of %d",
            non_finite.sum(), zero_norm.sum(), n_sample,
        )
        x = x[~bad]
    if k > len(x):
        raise ValueError(f"k={k} exceeds the {len(x)} finite training points sampled from {store.root}")
    kmeans = faiss.Kmeans(
        store.dim, k, niter=niter, spherical=True, seed=seed, gpu=gpu, verbose=False,
        max_points_per_centroid=max_points_per_centroid, init_method=_FAISS_INIT[init],
    )
    kmeans.train(x)
    log.info("spherical k-means: k=%d on %d rows, final objective %.4f", k, len(x), kmeans.obj[-1])
    return _l2_normalised(kmeans.centroids, store.dim)


def _merge_block(
    gram: np.ndarray, sims: np.ndarray, nearest: np.ndarray, threshold: float, n_kept: int
) -> tuple[np.ndarray, list[int]]:
    """Greedy pass over one block given its Gram matrix and each row's best match among earlier kept
    centroids (``sims``, ``nearest``); returns the block's new indices and its kept positions."""
    mapping = np.empty(len(gram), dtype=np.int64)
    kept: list[int] = []
    for i, row in enumerate(gram):
        sim, target = sims[i], nearest[i]
        if kept:
            j = int(np.argmax(row[kept]))
            if row[kept[j]] > sim:
                sim, target = row[kept[j]], n_kept + j
        if sim >= threshold:
            mapping[i] = target
        else:
            mapping[i] = n_kept + len(kept)
            kept.append(i)
    return mapping, kept


def merge_centroids(
    centroids: np.ndarray, threshold: float = 0.70, *, block_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy near-duplicate merge: drop centroid i if ``cos(mu_i, mu_j) >= threshold`` for a kept j < i.

    Returns ``(kept, mapping)``: the kept unit centroids in their original order and, for every old
    index, its new index (a dropped centroid maps to its most similar previously kept one).
    Cost is O(K * K_kept * D): each block of ``block_size`` centroids is searched against a faiss
    ``IndexFlatIP`` of the centroids kept so far, then resolved inside the block.
    """
    c = _l2_normalised(centroids, np.shape(centroids)[-1])
    kept_index = faiss.IndexFlatIP(c.shape[1])
    mappings: list[np.ndarray] = []
    kept: list[int] = []
    for start in range(0, len(c), block_size):
        block = c[start : start + block_size]
        if kept:
            sims, nearest = kept_index.search(block, 1)
            sims, nearest = sims[:, 0], nearest[:, 0]
        else:
            sims, nearest = np.full(len(block), -np.inf), np.full(len(block), -1)
        mapping, block_kept = _merge_block(block @ block.T, sims, nearest, threshold, len(kept))
        mappings.append(mapping)
        kept_index.add(block[block_kept])
        kept.extend(start + i for i in block_kept)
    return c[kept], np.concatenate(mappings)


class _NpyColumn:
    """A 1-D .npy file filled slice by slice, re-mapped per write so only one slice is resident."""

    def __init__(self, path: Path, length: int, dtype: np.dtype) -> None:
        self.path = path
        np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(length,))

    def write(self, start: int, values: np.ndarray) -> None:
        column = np.lib.format.open_memmap(self.path, mode="r+")
        column[start : start + len(values)] = values


@dataclass(frozen=True)
class AssignmentSummary:
    n: int
    k: int
    n_quarantined: int
    n_non_finite: int
    n_zero_norm: int
    n_empty_clusters: int
    seconds: float
    rows_per_s: float
    mean_distance: float  # mean 1 - cos to the nearest centroid over the assigned rows (NaN if none)
    n_held_out: int = 0  # rows kept out of every plan for evaluation (quarantine reason "held_out")
    n_corrupt_image: int = 0  # rows whose image did not decode when embedded (reason "corrupt_image")
    version_dir: Path | None = None  # the committed clusters version = the pool version
    version_id: str | None = None


def _centroid_index(centroids: np.ndarray, gpu: bool) -> faiss.Index:
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    return faiss.index_cpu_to_all_gpus(index) if gpu else index


class _BatchResult(NamedTuple):
    cluster_id: np.ndarray  # int32, -1 where quarantined
    distance: np.ndarray  # float32 1 - cos, NaN where quarantined
    non_finite: np.ndarray
    zero_norm: np.ndarray
    held_out: np.ndarray | None = None  # kept out of every plan (evaluation's held-out slice)
    corrupt: np.ndarray | None = None  # the image did not decode when embedded (embed meta "undecodable")

    @property
    def valid(self) -> np.ndarray:
        bad = self.non_finite | self.zero_norm
        for extra in (self.held_out, self.corrupt):
            if extra is not None:
                bad = bad | extra
        return ~bad

    def masked(self, rows: np.ndarray, field: str) -> "_BatchResult":
        """This result with ``rows`` (bool) taken out of the clusters: cluster -1, distance NaN, and
        recorded under ``field`` (``held_out`` or ``corrupt``)."""
        return self._replace(cluster_id=np.where(rows, -1, self.cluster_id).astype(np.int32),
                             distance=np.where(rows, np.nan, self.distance).astype(np.float32),
                             **{field: rows})


@dataclass(frozen=True)
class _ShardAssigner:
    """Assign one shard's embeddings file, batch by batch (``engine.map_shards``' function:
    picklable; the centroid index is built in the worker)."""

    centroids: np.ndarray
    batch_size: int
    use_gpu: bool

    def __call__(self, path: str) -> list[_BatchResult]:
        index = _centroid_index(self.centroids, self.use_gpu)
        return [_assign_batch(index, view) for _, view in npy_chunks(path, self.batch_size)]


def _assign_batch(index: faiss.Index, embeddings: np.ndarray) -> _BatchResult:
    x, non_finite, zero_norm = _normalised_rows(embeddings)
    valid = ~(non_finite | zero_norm)
    sims, labels = index.search(x, 1)  # flagged rows are zeros: searched, then masked
    cluster_id = np.where(valid, labels[:, 0], -1).astype(np.int32)
    distance = np.where(valid, 1.0 - sims[:, 0], np.nan).astype(np.float32)
    return _BatchResult(cluster_id, distance, non_finite, zero_norm)


def _assignment_table(sample_index: np.ndarray, sample_ids: pa.Array, shard: str, result: _BatchResult) -> pa.Table:
    columns = [sample_index, sample_ids, pa.repeat(shard, len(sample_index)), result.cluster_id,
               pa.array(result.distance, mask=~result.valid)]
    return pa.table(columns, schema=ASSIGNMENT_SCHEMA)


def _quarantine_table(sample_index: np.ndarray, sample_ids: pa.Array, result: _BatchResult) -> pa.Table:
    bad = ~result.valid
    reasons = np.where(result.non_finite[bad], NON_FINITE, ZERO_NORM)
    if result.held_out is not None:
        reasons = np.where(result.held_out[bad] & ~result.non_finite[bad] & ~result.zero_norm[bad], HELD_OUT, reasons)
    if result.corrupt is not None:  # the embedding is zero because the image did not decode: that is why
        reasons = np.where(result.corrupt[bad], CORRUPT_IMAGE, reasons)
    return pa.table([sample_index[bad], sample_ids.filter(bad), reasons], schema=QUARANTINE_SCHEMA)


def assign(
    store: EmbeddingStore,
    centroids: np.ndarray,
    out_dir: str | Path,
    *,
    batch_size: int = 65536,
    use_gpu: UseGpu = "auto",
    fit: Any | Callable[[AssignmentSummary], Any] | None = None,
    refs: Mapping[str, str | Path] | None = None,
    hold_out: Callable[[np.ndarray], np.ndarray] | None = None,
    engine: Engine | None = None,
) -> AssignmentSummary:
    """Assign every embedding to its nearest centroid (inner product on unit vectors), streaming.

    Commits ONE version of the artefact root ``out_dir`` (``io.versions``) holding
    ``cluster_id.npy`` (int32, -1 = quarantined), ``distance.npy`` (float32 ``1 - cos``, NaN =
    quarantined), ``assignments.parquet`` (one row per sample in pool order; quarantined rows have
    cluster_id -1 and a null distance), ``quarantine.parquet``, ``centroids.npy`` (the unit
    centroids used) and, when ``fit`` is given, ``fit.json``: ``fit`` is a ``refresh.FitRecord``
    or a function of this call's summary returning one (a re-training records the mean distance
    it measures here; an assign-only refresh passes the previous record on). The version refs the
    embeddings version read (``embeddings``) and ``refs`` (e.g. ``manifest=<manifest version>``):
    its id is the pool version. The returned summary names it (``version_dir``, ``version_id``).

    Quarantine reasons, first that applies: ``corrupt_image`` (the embedding step could not decode
    the image: its meta.json lists it under ``undecodable``), ``non_finite_embedding``,
    ``zero_norm_embedding``, ``held_out``.

    ``engine`` (``core.engine``; None: in this process) assigns the shards, one task per shard
    (batches of ``batch_size`` rows); every file is written here in pool order from the results,
    so every engine writes the same bytes. A shard whose task fails raises, naming the shard.
    """
    engine = resolve_engine(engine)
    try:
        c = _l2_normalised(centroids, store.dim)
    except ValueError as err:
        raise ValueError(f"centroids do not fit {store.kind} embeddings in {store.root}: {err}") from err
    assigner = _ShardAssigner(c, batch_size, _resolve_gpu(use_gpu))
    sizes = np.zeros(len(c), dtype=np.int64)
    n_non_finite = n_zero_norm = n_held = n_corrupt = 0
    distance_sum = 0.0
    t0 = time.perf_counter()
    all_refs = {**versions.pinned(embeddings=store.root), **versions.pinned(**dict(refs or {}))}
    with versions.Artefact(out_dir, "clusters").write(refs=all_refs) as staging, contextlib.ExitStack() as stack:
        out = staging.path
        tmp = {name: out / name for name in (
            "cluster_id.npy", "distance.npy", "assignments.parquet", "quarantine.parquet")}
        cluster_col = _NpyColumn(tmp["cluster_id.npy"], len(store), np.int32)
        distance_col = _NpyColumn(tmp["distance.npy"], len(store), np.float32)
        assignments = stack.enter_context(pq.ParquetWriter(tmp["assignments.parquet"], ASSIGNMENT_SCHEMA))
        quarantine = stack.enter_context(pq.ParquetWriter(tmp["quarantine.parquet"], QUARANTINE_SCHEMA))
        paths = [str(store.embedding_path(shard)) for shard in store.shards]
        for outcome in engine.map_shards(assigner, paths):
            shard, offset = store.shards[outcome.index], int(store.offsets[outcome.index])
            if not outcome.ok:
                raise RuntimeError(f"assignment of shard {shard} ({paths[outcome.index]}) failed: "
                                   f"{type(outcome.error).__name__}: {outcome.error}") from outcome.error
            corrupt_rows = store.undecodable_rows(shard)
            local_start = 0
            for result in outcome.value:
                n = len(result.cluster_id)
                start = offset + local_start
                sample_index = np.arange(start, start + n, dtype=np.int64)
                sample_ids = store.sample_ids(shard, local_start, local_start + n)
                if corrupt_rows.size:
                    corrupt = np.isin(np.arange(local_start, local_start + n), corrupt_rows)
                    result = result.masked(corrupt, "corrupt")._replace(
                        non_finite=result.non_finite & ~corrupt, zero_norm=result.zero_norm & ~corrupt)
                    n_corrupt += int(corrupt.sum())
                if hold_out is not None:  # ``hold_out(ids)``: the rows kept out of every plan (cluster -1)
                    held = np.asarray(hold_out(np.asarray(sample_ids.to_pylist(), dtype=object)), dtype=bool)
                    n_held += int((held & result.valid).sum())
                    result = result.masked(held, "held_out")
                cluster_col.write(start, result.cluster_id)
                distance_col.write(start, result.distance)
                assignments.write_table(_assignment_table(sample_index, sample_ids, shard, result))
                if not result.valid.all():
                    quarantine.write_table(_quarantine_table(sample_index, sample_ids, result))
                sizes += np.bincount(result.cluster_id[result.valid], minlength=len(c))
                distance_sum += float(result.distance[result.valid].sum(dtype=np.float64))
                n_non_finite += int(result.non_finite.sum())
                n_zero_norm += int(result.zero_norm.sum())
                local_start += n
        stack.close()  # the parquet writers finish their files
        save_npy(out / "centroids.npy", c)
        seconds = time.perf_counter() - t0
        summary = AssignmentSummary(
            n=len(store), k=len(c), n_quarantined=n_non_finite + n_zero_norm + n_held + n_corrupt,
            n_non_finite=n_non_finite, n_held_out=n_held, n_corrupt_image=n_corrupt,
            n_zero_norm=n_zero_norm, n_empty_clusters=int((sizes == 0).sum()), seconds=seconds,
            rows_per_s=len(store) / seconds if seconds > 0 else 0.0,
            mean_distance=distance_sum / n_valid if (n_valid := int(sizes.sum())) else float("nan"),
        )
        if fit is not None:
            (fit(summary) if callable(fit) else fit).write(out)
    return dataclasses.replace(summary, version_dir=staging.version_dir, version_id=staging.version_id)


def mean_distance(store: EmbeddingStore, centroids: np.ndarray, shards: Iterable[str], *,
                  batch_size: int = 65536, use_gpu: UseGpu = "auto") -> tuple[int, float]:
    """``(rows, mean 1 - cos to the nearest centroid)`` over the valid rows of the named shards
    (streamed; the mean is NaN when there is no valid row)."""
    wanted = set(shards)
    unknown = wanted - set(store.shards)
    if unknown:
        raise ValueError(f"shards not in {store.root}: {sorted(unknown)[:5]}")
    index = _centroid_index(_l2_normalised(centroids, store.dim), _resolve_gpu(use_gpu))
    rows, total = 0, 0.0
    for shard in store.shards:
        if shard not in wanted:
            continue
        for _, view in npy_chunks(store.embedding_path(shard), batch_size):
            result = _assign_batch(index, view)
            rows += int(result.valid.sum())
            total += float(result.distance[result.valid].sum(dtype=np.float64))
    return rows, (total / rows if rows else float("nan"))


def cluster_sizes(cluster_id_path: str | Path, k: int, *, chunk_rows: int = 1 << 22) -> np.ndarray:
    """Rows per cluster (int64, length k) by a streaming bincount over ``cluster_id.npy``; -1 ignored."""
    path = Path(cluster_id_path)
    sizes = np.zeros(k, dtype=np.int64)
    for _, ids in npy_chunks(path, chunk_rows):
        ids = ids[ids >= 0]
        if ids.size and ids.max() >= k:
            raise ValueError(f"{path}: cluster id {ids.max()} out of range for k={k}")
        sizes += np.bincount(ids, minlength=k)
    return sizes
