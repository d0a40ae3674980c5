"""The training loader: a seeded shuffle buffer and batches of distinct samples over a pool selection.

``ShuffleBatcher`` turns a stream into batches: a seeded shuffle buffer (webdataset's
``shuffle(bufsize)``: each arriving item swaps with a uniformly drawn buffered one, which is emitted)
followed by a composer that never puts one ``sample_id`` twice into a batch (a repeat waits for the
next batch). Its decisions depend only on the seed and the (sample_index, sample_id) stream, so
``PairBatches`` composes the batches from the manifests alone (``record_batches``: the
``(sample_index, sample_id)`` stream through the batcher), then reads the image bytes of each batch
(``PairReader``: one seek per image with the manifest's offsets), so the shuffle buffer holds no
image and ``batches(skip=k)`` resumes after k batches without reading the images of the batches
skipped.

``batch_loader`` decodes and preprocesses in ``num_workers`` DataLoader worker processes: each
worker replays the (cheap) batch composition and reads and collates only its own batches — batch i
(counted from ``skip``) is worker i mod W's, and the DataLoader takes the workers' outputs round
robin — so the batches and their order are the same for every number of workers.
"""
from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, Protocol, Sequence, TypeVar

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from dynamics_assets.core.ingest.pool import Pair, PoolShard, Record, pool_shards, records, shard_ok_rows
from dynamics_assets.core.io.webdataset import read_members, read_ranges

_UNIFORM_CHUNK = 4096  # random draws are taken from the generator in chunks of this size


class _HasSampleId(Protocol):
    @property
    def sample_id(self) -> str: ...


T = TypeVar("T", bound=_HasSampleId)


class ShuffleBatcher(Generic[T]):
    """Seeded shuffle buffer + batches of distinct ``sample_id``s; all state is inspectable."""

    def __init__(self, seed: int | Sequence[int], batch_size: int, buffer_size: int) -> None:
        if batch_size < 1 or buffer_size < 1:
            raise ValueError("batch_size and buffer_size must be >= 1")
        self.batch_size = batch_size
        self.buffer_size = buffer_size
        self._rng = np.random.default_rng(seed)
        self._uniforms = np.empty(0)
        self._next_uniform = 0
        self.buffer: list[T] = []
        self.batch: list[T] = []  # the batch being filled
        self.deferred: list[T] = []  # items whose sample_id is already in ``batch``
        self._batch_ids: set[str] = set()

    def push(self, item: T) -> list[T] | None:
        """Feed one stream item; returns a batch when one is complete."""
        if len(self.buffer) < self.buffer_size:
            self.buffer.append(item)
            return None
        j = self._randint(len(self.buffer))
        out, self.buffer[j] = self.buffer[j], item
        return self._place(out)

    def drain(self) -> list[T] | None:
        """After the stream ended: the next complete batch from the buffer, or None."""
        while self.buffer:
            j = self._randint(len(self.buffer))
            self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
            batch = self._place(self.buffer.pop())
            if batch is not None:
                return batch
        return None

    def drain_rest(self) -> list[T] | None:
        """After ``drain``: the next of the last, smaller batches made of what is still held (the
        incomplete batch, then the items deferred because their id was in it), ids distinct within
        each; None when nothing is held. Keeps its state on the batcher, like ``drain``."""
        pending = self.batch + self.deferred
        if not pending:
            return None
        batch, ids, later = [], set(), []
        for x in pending:
            if x.sample_id in ids or len(batch) == self.batch_size:
                later.append(x)
            else:
                batch.append(x)
                ids.add(x.sample_id)
        self.batch, self.deferred, self._batch_ids = [], later, set()
        return batch

    def held(self) -> list[T]:
        """Items taken from the stream and not yet emitted (after ``drain``: the dropped rest)."""
        return self.buffer + self.batch + self.deferred

    def map_held(self, fn: Callable[[T], T]) -> None:
        """Replace every held item by ``fn(item)`` (which must keep its sample_id)."""
        self.buffer = [fn(x) for x in self.buffer]
        self.batch = [fn(x) for x in self.batch]
        self.deferred = [fn(x) for x in self.deferred]

    def _place(self, item: T) -> list[T] | None:
        if item.sample_id in self._batch_ids:
            self.deferred.append(item)
            return None
        self.batch.append(item)
        self._batch_ids.add(item.sample_id)
        if len(self.batch) < self.batch_size:
            return None
        done, waiting = self.batch, self.deferred
        self.batch, self.deferred, self._batch_ids = [], [], set()
        for x in waiting:  # the waiting items go first; the new batch is completed only by push/drain
            if len(self.batch) < self.batch_size - 1 and x.sample_id not in self._batch_ids:
                self.batch.append(x)
                self._batch_ids.add(x.sample_id)
            else:
                self.deferred.append(x)
        return done

    def _randint(self, n: int) -> int:
        if self._next_uniform == len(self._uniforms):
            self._uniforms = self._rng.random(_UNIFORM_CHUNK)
            self._next_uniform = 0
        u = self._uniforms[self._next_uniform]
        self._next_uniform += 1
        return min(int(u * n), n - 1)


def batch_stream(batcher: ShuffleBatcher[T], items: Iterable[T], *, keep_last: bool = False) -> Iterator[list[T]]:
    """Every complete batch of ``items``; then, with ``keep_last``, the rest as smaller last
    batches (``drain_rest``), so every item is in a batch; without it the rest is dropped, as in
    open_clip."""
    for item in items:
        if (batch := batcher.push(item)) is not None:
            yield batch
    while (batch := batcher.drain()) is not None:
        yield batch
    while keep_last and (batch := batcher.drain_rest()) is not None:
        yield batch


@dataclass(frozen=True, eq=False)
class PairBatches:
    """One pass over (a selection of) a pool as shuffled batches of pairs with distinct ids.

    Deterministic in ``seed``; ``batches(skip=k)`` resumes after k batches without re-reading the
    images of the batches skipped.
    """

    manifest_dir: Path
    shards_dir: Path
    seed: int | Sequence[int]
    batch_size: int
    buffer_size: int = 4096
    indices: np.ndarray | None = None
    counts: np.ndarray | None = None
    keep_last: bool = False  # the items left after the last full batch make smaller last batches

    def __iter__(self) -> Iterator[list[Pair]]:
        return self.batches()

    def num_batches(self) -> int:
        """The number of batches of the pass (replayed from the manifests)."""
        stream = records(pool_shards(self.manifest_dir), self.indices, self.counts)
        return sum(1 for _ in batch_stream(self._batcher(), stream, keep_last=self.keep_last))

    def record_batches(self, skip: int = 0, shards: list[PoolShard] | None = None) -> Iterator[list[Record]]:
        """The batches as ``Record``s (from the manifests alone), after the first ``skip``."""
        shards = pool_shards(self.manifest_dir) if shards is None else shards
        replay = batch_stream(self._batcher(), records(shards, self.indices, self.counts), keep_last=self.keep_last)
        for done in range(skip):
            if next(replay, None) is None:
                raise ValueError(f"cannot skip {skip} batches: the pass has {done}")
        yield from replay

    def batches(self, skip: int = 0) -> Iterator[list[Pair]]:
        shards = pool_shards(self.manifest_dir)
        reader = PairReader(shards, self.shards_dir)
        for batch in self.record_batches(skip, shards):
            yield reader.read(batch)

    def _batcher(self) -> ShuffleBatcher:
        return ShuffleBatcher(self.seed, self.batch_size, self.buffer_size)


class PairReader:
    """The pairs of given records (a batch), read from the pool's shards in file order.

    Keeps the manifest rows of the shards used last, up to ``cache_rows`` rows (at least two
    shards): a shuffled batch draws from the shards its shuffle buffer spans, and the last batches of
    a pass (the buffer drained) from all of them at once, so the cache must hold many times the
    buffer, or every drained batch re-reads every manifest. With the manifest's image offsets (uncompressed tars) it
    seeks to each image; without them (a compressed shard) it parses the shard for the batch's
    members, which is correct but slow for a shard that many batches touch."""

    def __init__(self, shards: list[PoolShard], shards_dir: str | Path, cache_rows: int = 1 << 18) -> None:
        self.shards = shards
        self.shards_dir = Path(shards_dir)
        self._offsets = np.array([s.offset for s in shards], dtype=np.int64)
        self._cache_rows = cache_rows
        self._cached_rows = 0
        self._rows: OrderedDict[int, dict[str, list]] = OrderedDict()

    def read(self, batch: Sequence[Record]) -> list[Pair]:
        index = np.array([r.sample_index for r in batch], dtype=np.int64)
        which = np.searchsorted(self._offsets, index, side="right") - 1
        out: list[Pair | None] = [None] * len(batch)
        for k in np.unique(which).tolist():
            shard = self.shards[k]
            rows = self._shard_rows(k)
            at = np.flatnonzero(which == k)
            local = index[at] - shard.offset
            order = np.argsort(local, kind="stable")
            at, local = at[order].tolist(), local[order].tolist()
            tar_path = self.shards_dir / shard.name
            members = [rows["image_member"][p] for p in local]
            if rows["image_offset"] is None or any(rows["image_offset"][p] is None for p in local):
                by_name = read_members(tar_path, members)
                data = [by_name[m] for m in members]
            else:
                data = read_ranges(tar_path, [(rows["image_offset"][p], rows["image_size"][p]) for p in local])
            for j, p, member, blob in zip(at, local, members, data):
                sample_id = rows["sample_id"][p]
                if sample_id != batch[j].sample_id:
                    raise RuntimeError(f"{shard.manifest_path}: sample {batch[j].sample_index} is {sample_id}, "
                                       f"expected {batch[j].sample_id} (the manifest changed while reading)")
                out[j] = Pair(shard.offset + p, sample_id, _open(blob, tar_path, member), rows["caption"][p])
        return out  # type: ignore[return-value]

    def _shard_rows(self, k: int) -> dict[str, list]:
        if k in self._rows:
            self._rows.move_to_end(k)
            return self._rows[k]
        shard = self.shards[k]
        located = {"image_offset", "image_size"} <= set(pq.read_schema(shard.manifest_path).names)
        columns = ["sample_id", "image_member", "caption", *(("image_offset", "image_size") if located else ())]
        table = shard_ok_rows(shard, columns)
        rows: dict[str, Any] = {c: table[c].to_pylist() for c in columns}
        rows.setdefault("image_offset", None)
        rows.setdefault("image_size", None)
        self._rows[k] = rows
        self._cached_rows += shard.n_ok
        while self._cached_rows > self._cache_rows and len(self._rows) > 2:
            self._cached_rows -= self.shards[self._rows.popitem(last=False)[0]].n_ok
        return rows


def _open(data: bytes, tar_path: Path, member: str) -> Image.Image:
    """The image, decoded lazily (on first pixel access), as ``pool.iter_shard_pairs`` opens it."""
    try:
        return Image.open(io.BytesIO(data))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{tar_path}: member {member} is not a decodable image ({e})") from e


def _as_is(batch: Any) -> Any:
    return batch


def batch_loader(batches: PairBatches, collate_fn: Callable[[list[Pair]], Any], *, skip: int = 0,
                 stop: int | None = None, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int | None = None) -> Iterable[Any]:
    """``collate_fn(pairs)`` of the batches ``skip`` .. ``stop`` − 1 of ``batches``, decoded in
    ``num_workers`` DataLoader worker processes (0: in this process); the same batches in the same
    order for every ``num_workers``. ``collate_fn`` runs in the workers (fork start method)."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")

    shards = pool_shards(batches.manifest_dir)  # read once here, inherited by the workers

    class Collated(IterableDataset):
        def __iter__(self) -> Iterator[Any]:
            info = get_worker_info()
            worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
            reader = PairReader(shards, batches.shards_dir)
            for i, batch in enumerate(batches.record_batches(skip, shards), start=skip):
                if stop is not None and i >= stop:
                    return
                if (i - skip) % n_workers == worker:
                    yield collate_fn(reader.read(batch))

    extra = {} if num_workers == 0 or prefetch_factor is None else {"prefetch_factor": prefetch_factor}
    # Own generator: creating the iterator draws a base seed from it, never from the global RNG
    # (which the training loop seeds and checkpoints).
    return DataLoader(Collated(), batch_size=None, collate_fn=_as_is, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(0), **extra)
