"""The embeddings of a pool, read back: one embedding kind over every shard, in pool order.

Written by ``embed.encode`` (one directory per shard: ``image.npy``, ``text.npy``,
``sample_id.npy``, ``meta.json``); read here by clustering, the samplers and the checks.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple

import numpy as np

from dynamics_assets.core.io.arrays import npy_chunks
from dynamics_assets.core.io import versions

if TYPE_CHECKING:
    import pyarrow as pa

EMBEDDING_KINDS = ("image", "text")


class Batch(NamedTuple):
    shard: str
    start: int  # global (pool) index of the first row
    local_start: int  # index of the first row inside the shard
    embeddings: np.ndarray  # read-only memory-mapped view


class EmbeddingStore:
    """Read-only view of one embedding kind over all shards of ``emb_dir``, in pool order."""

    def __init__(self, emb_dir: str | Path, kind: str = "image") -> None:
        if kind not in EMBEDDING_KINDS:
            raise ValueError(f"kind must be one of {EMBEDDING_KINDS}, got {kind!r}")
        # an artefact root reads its current version; a committed version's file sizes are checked
        # (a stat per file: a truncated or missing shard file is named here, not deep in numpy)
        self.root = versions.open_checked(emb_dir)
        self.kind = kind
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: embedding directory not found")
        # Hidden entries are temporary directories of in-progress atomic writes.
        self.shards = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.shards:
            raise ValueError(f"{self.root}: no embedding shard directories")
        self.dim = self._shard_shape(self.shards[0])[1]
        self.counts = np.array([self._check_shard(s) for s in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])

    def embedding_path(self, shard: str) -> Path:
        return self.root / shard / f"{self.kind}.npy"

    def sample_id_path(self, shard: str) -> Path:
        return self.root / shard / "sample_id.npy"

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _shard_shape(self, shard: str) -> tuple[int, int]:
        path = self.embedding_path(shard)
        try:
            emb = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path}: unreadable embeddings ({e}); re-materialise the embeddings") from e
        if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
            raise ValueError(f"{path}: expected a 2-D float array, got shape {emb.shape} dtype {emb.dtype}")
        return emb.shape

    def _check_shard(self, shard: str) -> int:
        n, dim = self._shard_shape(shard)
        if dim != self.dim:
            raise ValueError(
                f"{self.embedding_path(shard)}: embedding dimension {dim} differs from "
                f"dimension {self.dim} of {self.embedding_path(self.shards[0])}"
            )
        ids = np.load(self.sample_id_path(shard), mmap_mode="r")
        if ids.shape != (n,):
            raise ValueError(
                f"{self.sample_id_path(shard)}: shape {ids.shape}, expected ({n},) to match {self.kind}.npy"
            )
        return n

    def undecodable_rows(self, shard: str) -> np.ndarray:
        """Rows of the shard (local positions, sorted) whose image the embedding step could not
        decode (meta.json ``undecodable``; their embeddings are zero), empty if none."""
        meta_path = self.root / shard / "meta.json"
        if not meta_path.is_file():
            return np.zeros(0, dtype=np.int64)
        rows = [u["row"] for u in json.loads(meta_path.read_text()).get("undecodable", [])]
        return np.array(sorted(rows), dtype=np.int64)

    def iter_shard_batches(self, batch_size: int) -> Iterator[Batch]:
        """Batches of at most ``batch_size`` rows in pool order; a batch never spans two shards."""
        for shard, offset in zip(self.shards, self.offsets):
            for local_start, view in npy_chunks(self.embedding_path(shard), batch_size):
                yield Batch(shard, int(offset) + local_start, local_start, view)

    def iter_batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start_index, view)`` pairs in pool order (see :meth:`iter_shard_batches`)."""
        for batch in self.iter_shard_batches(batch_size):
            yield batch.start, batch.embeddings

    def sample_ids(self, shard: str, start: int, stop: int) -> pa.Array:
        """Sample ids of rows ``[start, stop)`` of a shard, as an Arrow string array."""
        ids = np.load(self.sample_id_path(shard), mmap_mode="r")[start:stop]
        import pyarrow as pa  # here: the code location imports this module (through the samplers)

        return pa.array(np.asarray(ids)).cast(pa.string())

    def take(self, indices: np.ndarray) -> np.ndarray:
        """float32 rows at sorted global ``indices``, read shard by shard through a memory map."""
        out = np.empty((len(indices), self.dim), dtype=np.float32)
        bounds = np.searchsorted(indices, self.offsets)
        for shard, offset, lo, hi in zip(self.shards, self.offsets, bounds[:-1], bounds[1:]):
            if hi > lo:
                out[lo:hi] = np.load(self.embedding_path(shard), mmap_mode="r")[indices[lo:hi] - offset]
        return out
