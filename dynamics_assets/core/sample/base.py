"""The sampler interface: a strategy turns a clustered pool into one epoch's sample plan.

A *pool* is the cluster id of every valid sample in pool order (-1 marks a sample that was
quarantined before clustering, or removed by a pruner, and is never sampled). It may carry the
context static pruners need: the cosine distance of every sample to its centroid, the centroids,
and the embedding directory (``ClusterPool.from_artifacts``). A *plan* is the sorted list of sample
indices to read in an epoch, each with a multiplicity (how many times it is seen), plus a
per-cluster summary (size, expected, realised). Plans depend only on (pool, parameters, seed,
epoch): the same inputs give byte-identical plans.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from dynamics_assets.core.io.arrays import npy_chunks

CHUNK = 1 << 20  # samples per random-number chunk; part of the algorithm (fixes the random stream)


@dataclass
class ClusterPool:
    """Cluster ids of a pool, read chunk by chunk (from memory or from an ``.npy`` file).

    Optional context (None when absent): ``distance`` per sample (float32 1 − cos to the assigned
    centroid, in memory or ``distance.npy``), ``centroids`` (K×D unit rows), ``embeddings_dir``
    (the EmbeddingStore root, pool order), ``manifest_dir`` (the raw_pairs manifest whose ok rows, in
    pool order, are the pool's samples: captions and image sizes for the DataComp filters), and a
    keep mask (``masked``: removed samples read as -1).
    """

    n_clusters: int
    _ids: np.ndarray | None = None
    _path: Path | None = None
    _sizes: np.ndarray | None = field(default=None, repr=False)
    _distance: np.ndarray | None = field(default=None, repr=False)
    _distance_path: Path | None = None
    centroids: np.ndarray | None = field(default=None, repr=False)
    embeddings_dir: Path | None = None
    _keep: np.ndarray | None = field(default=None, repr=False)
    _budget_base: int | None = None
    fingerprint: str | None = None  # identity of the unmasked pool's content (None: unknown)
    manifest_dir: Path | None = None

    @classmethod
    def from_array(cls, cluster_id: np.ndarray, n_clusters: int, *, distance: np.ndarray | None = None,
                   centroids: np.ndarray | None = None,
                   embeddings_dir: str | Path | None = None,
                   manifest_dir: str | Path | None = None) -> "ClusterPool":
        ids = np.ascontiguousarray(cluster_id, dtype=np.int32)
        if distance is not None:
            distance = np.ascontiguousarray(distance, dtype=np.float32)
            if distance.shape != ids.shape:
                raise ValueError(f"distance has shape {distance.shape}, cluster ids {ids.shape}")
        return cls(n_clusters=int(n_clusters), _ids=ids, _distance=distance,
                   centroids=_checked_centroids(centroids, n_clusters, "centroids"),
                   embeddings_dir=None if embeddings_dir is None else Path(embeddings_dir),
                   manifest_dir=None if manifest_dir is None else Path(manifest_dir))._validated()

    @classmethod
    def from_npy(cls, path: str | Path, n_clusters: int) -> "ClusterPool":
        return cls(n_clusters=int(n_clusters), _path=Path(path))._validated()

    @classmethod
    def from_artifacts(cls, clusters_dir: str | Path, n_clusters: int,
                       embeddings_dir: str | Path | None = None, fingerprint: str | None = None,
                       manifest_dir: str | Path | None = None) -> "ClusterPool":
        """The pool the ``clusters`` stage wrote: ``cluster_id.npy``, ``distance.npy`` and
        ``centroids.npy`` in ``clusters_dir``; ``embeddings_dir`` is the EmbeddingStore root;
        ``fingerprint`` names the pool's content (the stage's hash of ``cluster_id.npy``);
        ``manifest_dir`` the pool's manifest (``PoolClusters.manifest_dir``; checked by the strategies
        that read it, so a pool whose manifest is gone still serves the others)."""
        d = Path(clusters_dir)
        for name in ("cluster_id.npy", "distance.npy", "centroids.npy"):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d / name}: cluster artefact not found")
        if embeddings_dir is not None and not Path(embeddings_dir).is_dir():
            raise FileNotFoundError(f"{embeddings_dir}: embedding directory not found")
        pool = cls(n_clusters=int(n_clusters), _path=d / "cluster_id.npy", _distance_path=d / "distance.npy",
                   centroids=_checked_centroids(np.load(d / "centroids.npy"), n_clusters, d / "centroids.npy"),
                   embeddings_dir=None if embeddings_dir is None else Path(embeddings_dir),
                   fingerprint=fingerprint, manifest_dir=None if manifest_dir is None else Path(manifest_dir))._validated()
        n_dist = int(np.load(pool._distance_path, mmap_mode="r").shape[0])
        if n_dist != len(pool):
            raise ValueError(f"{pool._distance_path}: {n_dist} rows, {pool._path} has {len(pool)}")
        return pool

    def masked(self, keep: np.ndarray) -> "ClusterPool":
        """The same pool with the samples where ``keep`` is False read as cluster -1 (removed).

        The mask (1 byte per sample) is held in memory; masks compose (a masked pool's mask is
        and-ed). Fractional budgets of later steps still refer to this pool's ``budget_base``.
        """
        keep = np.asarray(keep)
        if keep.dtype != np.bool_ or keep.shape != (len(self),):
            raise ValueError(f"keep must be a bool array of shape ({len(self)},); got {keep.dtype} {keep.shape}")
        combined = keep if self._keep is None else keep & self._keep
        return dataclasses.replace(self, _keep=combined, _sizes=None, _budget_base=self.budget_base,
                                   fingerprint=None)

    @property
    def keep(self) -> np.ndarray | None:
        """The keep mask of a masked pool (True = still in), None for an unmasked one."""
        return self._keep

    def _validated(self) -> "ClusterPool":
        lo, hi, n = 0, -1, 0
        for _, chunk in self.chunks():
            if len(chunk):
                lo, hi = min(lo, int(chunk.min())), max(hi, int(chunk.max()))
            n += len(chunk)
        if lo < -1 or hi >= self.n_clusters:
            raise ValueError(f"cluster ids must lie in [-1, {self.n_clusters}); found [{lo}, {hi}]")
        return self

    def __len__(self) -> int:
        if self._ids is not None:
            return len(self._ids)
        return int(np.load(self._path, mmap_mode="r").shape[0])

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, int32 ids) in pool order; a file is read with plain reads, not mmap,
        so resident memory stays O(chunk) whatever the pool size. Masked-out samples read as -1."""
        raw = _array_chunks(self._ids, size) if self._ids is not None else npy_chunks(self._path, size, np.int32, ndim=1)
        if self._keep is None:
            yield from raw
            return
        for s, ids in raw:
            yield s, np.where(self._keep[s:s + len(ids)], ids, np.int32(-1))

    @property
    def has_distance(self) -> bool:
        return self._distance is not None or self._distance_path is not None

    def distance_chunks(self, size: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, float32 distance) aligned with ``chunks(size)``."""
        if self._distance is not None:
            return _array_chunks(self._distance, size)
        if self._distance_path is None:
            raise ValueError("this pool has no distances: build it with ClusterPool.from_artifacts")
        return npy_chunks(self._distance_path, size, np.float32, ndim=1)

    def distance_at(self, indices: np.ndarray) -> np.ndarray:
        """float32 distances of the samples at ``indices``."""
        if self._distance is not None:
            return self._distance[indices]
        if self._distance_path is None:
            raise ValueError("this pool has no distances: build it with ClusterPool.from_artifacts")
        return np.asarray(np.load(self._distance_path, mmap_mode="r")[indices], dtype=np.float32)

    @property
    def sizes(self) -> np.ndarray:
        """N_c for every cluster (int64)."""
        if self._sizes is None:
            sizes = np.zeros(self.n_clusters + 1, dtype=np.int64)
            for _, chunk in self.chunks():
                sizes += np.bincount(chunk + 1, minlength=self.n_clusters + 1)
            self._sizes = sizes[1:]
            self._n_unassigned = int(sizes[0])
        return self._sizes

    @property
    def n_valid(self) -> int:
        return int(self.sizes.sum())

    @property
    def budget_base(self) -> int:
        """The valid count fractional budgets refer to: ``n_valid``, or the original pool's for a
        masked pool (equal compute across recipes that prune first)."""
        return self.n_valid if self._budget_base is None else self._budget_base


def _array_chunks(a: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray]]:
    for s in range(0, len(a), size):
        yield s, a[s:s + size]


def _checked_centroids(centroids: np.ndarray | None, n_clusters: int, source: object) -> np.ndarray | None:
    if centroids is None:
        return None
    c = np.asarray(centroids, dtype=np.float32)
    if c.ndim != 2 or c.shape[0] != n_clusters:
        raise ValueError(f"{source}: expected {n_clusters} centroid rows, got shape {c.shape}")
    return c


@dataclass
class Plan:
    """One epoch's sample: sorted unique indices with multiplicities, and a per-cluster summary."""

    indices: np.ndarray       # sorted ascending, unique; uint32 (int64 for pools ≥ 2^32)
    multiplicity: np.ndarray  # uint16, ≥ 1, aligned with indices
    cluster_size: np.ndarray  # int64 N_c
    cluster_expected: np.ndarray  # float64: expected draws per cluster (with multiplicity)
    cluster_realised: np.ndarray  # int64: realised draws per cluster (with multiplicity)
    meta: dict[str, Any]

    @property
    def size(self) -> int:
        """Samples seen in the epoch, repeats counted."""
        return int(self.multiplicity.sum(dtype=np.int64))

@runtime_checkable
class Sampler(Protocol):
    """A curation strategy. ``dynamic`` strategies redraw every epoch; static ones do not."""

    name: str
    dynamic: bool

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int) -> Plan: ...

    def params(self) -> dict[str, Any]: ...


def guarantees(*, exact_budget: bool, max_multiplicity: int, every_cluster_drawn: bool) -> dict[str, Any]:
    """What a sampler promises about its plan, stored in ``plan.meta["guarantees"]`` and verified by
    ``sample.validate`` (which therefore never needs to know which strategy drew the plan):

    exact_budget         the plan's size (repeats counted) equals ``meta["budget"]``;
    max_multiplicity     no sample appears more often than this;
    every_cluster_drawn  every non-empty cluster has at least one draw (no starvation).
    """
    return {"exact_budget": bool(exact_budget), "max_multiplicity": int(max_multiplicity),
            "every_cluster_drawn": bool(every_cluster_drawn)}


def resolve_budget(budget: float | int, n: int, *, most: int | None = None) -> int:
    """A fraction in (0, 1] of the valid pool (a float), or an absolute count (an int; settings
    files write it ``{count: N}``, see ``sample.spec``). ``most``: the largest budget the strategy
    can realise (e.g. the pool itself for sampling without repeats); above it is refused, naming
    the budget and the allowed range."""
    if isinstance(budget, bool):
        raise TypeError("budget must be a fraction or a count")
    if isinstance(budget, float) or (isinstance(budget, (np.floating,))):
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"a fractional budget must lie in (0, 1]; got {budget}")
        return int(round(budget * n))
    if int(budget) < 0:
        raise ValueError(f"budget must be ≥ 0; got {budget}")
    if most is not None and int(budget) > most:
        raise ValueError(f"budget {{count: {int(budget)}}} exceeds what this strategy can draw from the pool "
                         f"(allowed: 1 ≤ count ≤ {most}, or a fraction in (0, 1])")
    return int(budget)


class DataclassParams:
    """``params()`` for a sampler that is a dataclass: every field but its name."""

    def params(self) -> dict[str, Any]:
        return dataclass_params(self)


def dataclass_params(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "name"}
