"""Streaming access to the valid image–text pairs of a pool (the read side of the manifest).

Pool order (as ``manifest.manifest_files`` / ``manifest.ok_rows``): shards sorted by shard (tar)
name, then by ``row``; only rows with ``status == 'ok'`` count. The global sample index of a pair
is its position in that order, so shard s holds the indices ``[offset_s, offset_s + n_ok_s)``.

A selection (sorted global indices, optionally with a parallel multiplicity array — e.g. a per-epoch
sample plan) is mapped onto shards with one vectorised ``np.searchsorted`` of the shard offsets:
shards without a requested index are never opened, and an opened shard is read in one pass.
Batching for training lives in ``train.loader``.

A ``Pair`` holds its image undecoded (``Image.open`` reads only the header). ``collate`` decodes
the images of a batch one by one (``images.decode_bounded``): each is checked against the pixel cap
from its header, decoded reduced to at most about ``DECODE_SCALE`` times the model's input side
(JPEG at a reduced DCT scale), preprocessed and released before the next is decoded, so a batch
never holds more than one full-size image (``bench/bench_large_images.py`` measures the peak).
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from dynamics_assets.core.ingest.images import MAX_PIXELS, check_pixels, decode_bounded
from dynamics_assets.core.ingest.manifest import OK, manifest_files
from dynamics_assets.core.io.webdataset import read_members, read_ranges

_SAMPLE_ID = re.compile("[0-9a-fA-F]{32}")
DECODE_SCALE = 2  # images are decoded down to no less than this multiple of the model's input side


@dataclass(frozen=True)
class PoolShard:
    name: str  # tar file name inside the shards directory
    manifest_path: Path
    n_ok: int
    offset: int  # global sample index of its first ok pair

    @property
    def stem(self) -> str:
        return self.manifest_path.stem


class Record(NamedTuple):
    """What batching needs to know about a pair: readable from the manifest alone."""

    sample_index: int
    sample_id: str


@dataclass(frozen=True)
class Pair:
    sample_index: int
    sample_id: str
    image: Image.Image
    caption: str


def pool_shards(manifest_dir: str | Path) -> list[PoolShard]:
    """The pool's shards in pool order (``manifest.manifest_files``) with ok counts and offsets."""
    if not Path(manifest_dir).is_dir():
        raise FileNotFoundError(f"manifest directory not found: {manifest_dir}")
    shards, offset = [], 0
    for name, path in manifest_files(manifest_dir):
        status = _read_manifest(path, ["status"])["status"]
        n_ok = int(pc.sum(pc.equal(status, OK)).as_py() or 0)
        shards.append(PoolShard(name, path, n_ok, offset))
        offset += n_ok
    return shards


def _read_manifest(path: Path, columns: Sequence[str]) -> pa.Table:
    try:
        return pq.read_table(path, columns=list(columns))
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: unreadable manifest or missing columns {list(columns)} ({e})") from e


def shard_ok_rows(shard: PoolShard, columns: Sequence[str]) -> pa.Table:
    """The shard's ok rows in ``row`` order (the columns asked for, plus ``row`` and ``status``)."""
    table = _read_manifest(shard.manifest_path, sorted({*columns, "row", "status"}))
    table = table.filter(pc.equal(table["status"], OK)).sort_by("row")
    if table.num_rows != shard.n_ok:
        raise RuntimeError(f"{shard.manifest_path}: ok rows changed while reading the pool")
    return table


def ok_sample_ids(shard: PoolShard) -> np.ndarray:
    """The shard's ok sample ids in row order as ``'S32'`` (32 hex characters each)."""
    ids = shard_ok_rows(shard, ["sample_id"])["sample_id"].to_pylist()
    for sample_id in ids:
        if not (isinstance(sample_id, str) and _SAMPLE_ID.fullmatch(sample_id)):
            raise ValueError(f"{shard.manifest_path}: sample_id {sample_id!r} is not 32 hex characters")
    return np.array(ids, dtype="S32")


def _check_selection(indices: np.ndarray, counts: np.ndarray | None, total: int) -> None:
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
    if indices.size and (indices[0] < 0 or indices[-1] >= total or np.any(np.diff(indices) < 0)):
        raise ValueError(f"indices must be sorted and within [0, {total})")
    if counts is not None and (counts.shape != indices.shape or np.any(counts < 0)):
        raise ValueError("counts must be non-negative and parallel to indices")


def _selected(
    shards: list[PoolShard], indices: np.ndarray | None, counts: np.ndarray | None, start: int
) -> Iterator[tuple[PoolShard, np.ndarray | None]]:
    """``(shard, local ok positions or None for all)`` for every shard with selected pairs,
    skipping the first ``start`` items of the expanded selection."""
    total = shards[-1].offset + shards[-1].n_ok if shards else 0
    if indices is None:
        if counts is not None:
            raise ValueError("counts need indices")
        picks: Iterable[tuple[PoolShard, np.ndarray | None]] = ((s, None) for s in shards)
    else:
        indices = np.asarray(indices)
        counts = None if counts is None else np.asarray(counts)
        _check_selection(indices, counts, total)
        bounds = np.searchsorted(indices, [s.offset for s in shards] + [total])
        picks = (
            (s, _local(indices[lo:hi] - s.offset, None if counts is None else counts[lo:hi]))
            for s, lo, hi in zip(shards, bounds[:-1], bounds[1:])
            if hi > lo
        )
    for shard, local in picks:
        size = shard.n_ok if local is None else local.size
        if start >= size:
            start -= size
            continue
        if start:
            local = np.arange(start, shard.n_ok) if local is None else local[start:]
            start = 0
        yield shard, local


def _local(positions: np.ndarray, counts: np.ndarray | None) -> np.ndarray:
    return positions if counts is None else np.repeat(positions, counts)


def iter_pool_pairs(
    manifest_dir: str | Path,
    shards_dir: str | Path,
    *,
    indices: np.ndarray | None = None,
    counts: np.ndarray | None = None,
    start: int = 0,
) -> Iterator[Pair]:
    """The ok pairs of the pool in pool order, or only the selected ``indices`` (sorted global
    indices; ``counts[i]`` copies of ``indices[i]`` when given); the first ``start`` are skipped."""
    return pairs_of(pool_shards(manifest_dir), shards_dir, indices, counts, start)


def records(shards: list[PoolShard], indices: np.ndarray | None, counts: np.ndarray | None) -> Iterator[Record]:
    for shard, local in _selected(shards, indices, counts, 0):
        ids = shard_ok_rows(shard, ["sample_id"])["sample_id"].to_pylist()
        positions = range(shard.n_ok) if local is None else local.tolist()
        for pos in positions:
            yield Record(shard.offset + pos, ids[pos])


def pairs_of(
    shards: list[PoolShard],
    shards_dir: str | Path,
    indices: np.ndarray | None,
    counts: np.ndarray | None,
    start: int,
) -> Iterator[Pair]:
    for shard, local in _selected(shards, indices, counts, start):
        yield from iter_shard_pairs(shard, shards_dir, local)


def iter_shard_pairs(
    shard: PoolShard, shards_dir: str | Path, local: np.ndarray | None = None
) -> Iterator[Pair]:
    """The shard's ok pairs in row order (or those at the local ok positions ``local``)."""
    located = {"image_offset", "image_size"} <= set(pq.read_schema(shard.manifest_path).names)
    rows = shard_ok_rows(shard, ["sample_id", "image_member", "caption", *(("image_offset", "image_size") if located else ())])
    positions = range(shard.n_ok) if local is None else local.tolist()
    if local is not None:
        rows = rows.take(pa.array(local))
    ids, members, captions = (rows[c].to_pylist() for c in ("sample_id", "image_member", "caption"))
    offsets = rows["image_offset"].to_pylist() if located else [None]
    sizes = rows["image_size"].to_pylist() if located else []
    tar_path = Path(shards_dir) / shard.name
    if None in offsets:  # no offsets (e.g. a compressed tar): parse the tar member by member
        by_name = read_members(tar_path, members)
        images = [by_name[m] for m in members]
    else:  # seek to each image's bytes (rows are in file order)
        images = read_ranges(tar_path, zip(offsets, sizes))
    for pos, sample_id, member, caption, data in zip(positions, ids, members, captions, images):
        yield Pair(shard.offset + pos, sample_id, _open_image(data, tar_path, member), caption)


def _open_image(data: bytes, tar_path: Path, member: str) -> Image.Image:
    """The image, decoded lazily (on first pixel access): a buffer of pairs holds encoded bytes."""
    try:
        return Image.open(io.BytesIO(data))
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise ValueError(f"{tar_path}: member {member} is not a decodable image ({e})") from e


def input_side(preprocess: Callable[[Image.Image], torch.Tensor]) -> int | None:
    """The model's input side as a torchvision ``Compose`` (open_clip's preprocess) states it: the
    largest ``size`` of its transforms; None if it states none."""
    sizes = []
    for transform in getattr(preprocess, "transforms", ()):
        size = getattr(transform, "size", None)
        values = [size] if isinstance(size, int) else list(size) if isinstance(size, (tuple, list)) else []
        sizes += [v for v in values if isinstance(v, int)]
    return max(sizes) if sizes else None


def collate(
    pairs: Sequence[Pair],
    preprocess: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    *,
    max_pixels: int | None = MAX_PIXELS,
    min_side: int | None = None,
    on_undecodable: Callable[[Pair, str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [B,3,H,W], tokens [B,L])`` for a batch of pairs, decoding one image at a time.

    An image whose header says more than ``max_pixels`` is refused (``ValueError`` naming the
    sample). Each image is decoded reduced while its shorter side stays >= ``min_side`` (default
    ``DECODE_SCALE`` x the input side of ``preprocess``; full size if that is unknown).
    An image that does not decode raises ``UndecodableImage``, unless ``on_undecodable`` is given:
    then the pair is left out of the batch and handed to it (with the reason) to be recorded —
    for pools whose manifest read image headers only (``decode: header``)."""
    if min_side is None and (side := input_side(preprocess)) is not None:
        min_side = DECODE_SCALE * side
    tensors, kept = [], []
    for p in pairs:
        try:
            tensors.append(_preprocess(preprocess, p, max_pixels, min_side))
        except UndecodableImage as e:
            if on_undecodable is None:
                raise
            on_undecodable(p, str(e))
            continue
        kept.append(p)
    if not tensors:
        raise UndecodableImage(f"no image of this batch of {len(pairs)} decodes (first: {pairs[0].sample_id})")
    return torch.stack(tensors), tokenizer([p.caption for p in kept])


class UndecodableImage(ValueError):
    """An image the manifest accepted (from its header) whose data does not decode."""


def _preprocess(preprocess: Callable[[Image.Image], torch.Tensor], pair: Pair, max_pixels: int | None,
                min_side: int | None) -> torch.Tensor:
    where = f"sample {pair.sample_id} (index {pair.sample_index})"
    check_pixels(pair.image, max_pixels, where)
    try:
        image = decode_bounded(pair.image, min_side)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # e.g. a truncated file
        raise UndecodableImage(f"{where}: image does not decode ({e})") from e
    try:
        return preprocess(image)
    finally:
        if image is not pair.image:
            image.close()  # release its pixels before the next image is decoded
