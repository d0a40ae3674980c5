"""The sampler interface: a strategy turns a clustered pool into one epoch's sample plan.

A *pool* is the cluster id of every valid sample in pool order (-1 marks a sample that was
quarantined before clustering and is never sampled). A *plan* is the sorted list of sample
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

CHUNK = 1 << 20  # samples per random-number chunk; part of the algorithm (fixes the random stream)


@dataclass
class ClusterPool:
    """Cluster ids of a pool, read chunk by chunk (from memory or from an ``.npy`` file)."""

    n_clusters: int
    _ids: np.ndarray | None = None
    _path: Path | None = None
    _sizes: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_array(cls, cluster_id: np.ndarray, n_clusters: int) -> "ClusterPool":
        ids = np.ascontiguousarray(cluster_id, dtype=np.int32)
        return cls(n_clusters=int(n_clusters), _ids=ids)._validated()

    @classmethod
    def from_npy(cls, path: str | Path, n_clusters: int) -> "ClusterPool":
        return cls(n_clusters=int(n_clusters), _path=Path(path))._validated()

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
        so resident memory stays O(chunk) whatever the pool size."""
        if self._ids is not None:
            for s in range(0, len(self._ids), size):
                yield s, self._ids[s:s + size]
            return
        with open(self._path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _fortran, dtype = read_header(f)
            if dtype != np.dtype("<i4") or len(shape) != 1:
                raise ValueError(f"{self._path}: expected a 1-d int32 array, got {dtype} {shape}")
            n = shape[0]
            for s in range(0, n, size):
                m = min(size, n - s)
                buf = np.empty(m, dtype=np.int32)  # fresh: consumers may hold on to chunks
                if f.readinto(memoryview(buf).cast("B")) != m * 4:
                    raise ValueError(f"{self._path}: truncated at sample {s}")
                yield s, buf

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

    def expanded(self) -> np.ndarray:
        """Every index repeated by its multiplicity (for the training loader)."""
        return np.repeat(self.indices, self.multiplicity)


@runtime_checkable
class Sampler(Protocol):
    """A curation strategy. ``dynamic`` strategies redraw every epoch; static ones do not."""

    name: str
    dynamic: bool

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int) -> Plan: ...

    def params(self) -> dict[str, Any]: ...


def resolve_budget(budget: float | int, n: int) -> int:
    """A fraction in (0, 1] of the valid pool (a float), or an absolute count (an int)."""
    if isinstance(budget, bool):
        raise TypeError("budget must be a fraction or a count")
    if isinstance(budget, float) or (isinstance(budget, (np.floating,))):
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"a fractional budget must lie in (0, 1]; got {budget}")
        return int(round(budget * n))
    if int(budget) < 0:
        raise ValueError(f"budget must be ≥ 0; got {budget}")
    return int(budget)


def dataclass_params(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "name"}
