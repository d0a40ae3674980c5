"""The training loader: a seeded shuffle buffer and batches of distinct samples over a pool selection.

``ShuffleBatcher`` turns a stream into batches: a seeded shuffle buffer (webdataset's
``shuffle(bufsize)``: each arriving item swaps with a uniformly drawn buffered one, which is emitted)
followed by a composer that never puts one ``sample_id`` twice into a batch (a repeat waits for the
next batch). Its decisions depend only on the seed and the (sample_index, sample_id) stream, so
``PairBatches.batches(skip=k)`` replays the first k batches from the manifests alone, then reads
only the pairs still held in the buffer and the rest of the stream.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Iterable, Iterator, Protocol, Sequence, TypeVar

import numpy as np

from dynamics_assets.core.ingest.pool import Pair, Record, pairs_of, pool_shards, records

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

    def batches(self, skip: int = 0) -> Iterator[list[Pair]]:
        shards = pool_shards(self.manifest_dir)
        batcher: ShuffleBatcher = self._batcher()
        pulled = 0

        def counted() -> Iterator[Record]:
            nonlocal pulled
            for record in records(shards, self.indices, self.counts):
                pulled += 1
                yield record

        replay = batch_stream(batcher, counted(), keep_last=self.keep_last)
        for done in range(skip):
            if next(replay, None) is None:
                raise ValueError(f"cannot skip {skip} batches: the pass has {done}")
        held = batcher.held()
        if held:
            wanted = np.unique([r.sample_index for r in held])
            found = {p.sample_index: p for p in pairs_of(shards, self.shards_dir, wanted, None, 0)}
            batcher.map_held(lambda r: found[r.sample_index])
        yield from batch_stream(batcher, pairs_of(shards, self.shards_dir, self.indices, self.counts, pulled),
                                keep_last=self.keep_last)

    def _batcher(self) -> ShuffleBatcher:
        return ShuffleBatcher(self.seed, self.batch_size, self.buffer_size)
