"""Per-shard, resumable embedding of a pool's ok pairs with an open_clip encoder.

For each shard (pool order) the ok pairs' images and captions are encoded in batches under
``torch.inference_mode()``, L2-normalised (x / ‖x‖₂) and stored as float16::

    <out_dir>/<shard_stem>/image.npy      (n_ok, D) float16
                           text.npy       (n_ok, D) float16
                           sample_id.npy  (n_ok,)   'S32'
                           meta.json      encoder identity, shard, n, dim, invalid_rows

``out_dir`` is an artefact root (``io.versions``): one call commits one version, whose staging
directory starts with hardlinks of the current version's shard directories and whose ``manifest``
ref pins the manifest version embedded. A shard directory is written with ``atomic_dir`` inside
the staging directory: it exists complete or not at all, and a call killed half-way leaves the
staging directory behind, which the next call adopts (resume): the shards completed before the
kill are not embedded again. Readers only ever see committed versions. A rerun skips a
directory whose meta.json matches the encoder identity and whose ids equal the manifest's ok ids;
when the manifest's ok ids are a subset of the stored ones (a shard that landed later made some of
its rows duplicates) the kept rows are copied without encoding anything; any other is recomputed. A row that is not finite or has zero norm is written as zeros and listed
under ``invalid_rows`` ({"image": [row, ...], "text": [...]}) for the clustering step to quarantine.
Decoding, preprocessing and tokenising of the next batches run in worker threads while the model
encodes the current one.
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

from dynamics_assets.core.io import versions
from dynamics_assets.core.io.atomic import atomic_dir, write_json
from dynamics_assets.core.io.progress import Progress, bar, offset
from dynamics_assets.core.model.clip import Encoder, EncoderSpec, load_encoder
from dynamics_assets.core.ingest.pool import Pair, PoolShard, collate, iter_shard_pairs, ok_sample_ids, pool_shards

FILES = ("image.npy", "text.npy", "sample_id.npy", "meta.json")

A = TypeVar("A")
B = TypeVar("B")


@dataclass(frozen=True)
class EmbedSummary:
    shards_total: int
    shards_embedded: int
    shards_skipped: int
    pairs_embedded: int
    invalid_rows: int  # rows with a non-finite or zero image or text embedding, skipped shards included
    dim: int
    seconds: float
    shards_subset: int = 0  # shards rewritten from their stored rows (some rows became duplicates)
    version_dir: Path | None = None  # the committed embeddings version (give this to readers)
    version_id: str | None = None
    resumed: bool = False  # an interrupted call's staging directory was adopted


def embed_shards(
    encoder: EncoderSpec | Encoder,
    manifest_dir: str | os.PathLike,
    shards_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    shards: Iterable[str] | None = None,
    workers: int = 2,
    progress: Progress | None = None,
) -> EmbedSummary:
    """Embed every shard of the pool (or the named ``shards``, by stem or tar name) into a new
    version of the artefact root ``out_dir`` (the summary names it).

    ``device`` is used when ``encoder`` is a spec; a loaded ``Encoder`` keeps its own device.
    ``manifest_dir``: the manifest version to embed (a root reads its current version).
    ``progress`` gets ``(pairs done, ok pairs of the chosen shards)`` (default: ``io.progress.bar``).
    """
    started = time.perf_counter()
    enc = encoder if isinstance(encoder, Encoder) else load_encoder(encoder, device)
    manifest_dir = versions.resolve(manifest_dir)
    todo = _chosen(pool_shards(manifest_dir), shards)
    embedded = pairs = invalid = subset = 0
    total, done = sum(s.n_ok for s in todo), 0
    progress = progress if progress is not None else bar("embed", "pair")
    art = versions.Artefact(out_dir, "embeddings")
    with art.write(base=art.current(), resume=True, keep_on_error=True,
                   refs=versions.pinned(manifest=manifest_dir)) as staging, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        for shard in todo:
            dest = staging.path / shard.stem
            ids = ok_sample_ids(shard)
            meta = _current_meta(dest, enc, ids)
            if meta is None:
                meta = _subset_of_existing(dest, enc, ids)
                subset += meta is not None
            if meta is None:
                with atomic_dir(dest) as tmp:
                    meta = _embed_shard(enc, shard, Path(shards_dir), ids, tmp, batch_size, pool, workers,
                                        progress=offset(progress, done, total))
                embedded += 1
                pairs += len(ids)
            invalid += len(set(meta["invalid_rows"]["image"]) | set(meta["invalid_rows"]["text"]))
            done += shard.n_ok
            if progress is not None:
                progress(done, total)
    return EmbedSummary(len(todo), embedded, len(todo) - embedded - subset, pairs, invalid, enc.embed_dim,
                        time.perf_counter() - started, subset, staging.version_dir, staging.version_id,
                        staging.resumed)


def _chosen(all_shards: list[PoolShard], names: Iterable[str] | None) -> list[PoolShard]:
    if names is None:
        return all_shards
    wanted = set(names)
    chosen = [s for s in all_shards if s.stem in wanted or s.name in wanted]
    unknown = wanted - {s.stem for s in chosen} - {s.name for s in chosen}
    if unknown:
        raise ValueError(f"shards not in the pool: {sorted(unknown)[:5]}")
    return chosen


def _stored_meta(dest: Path, enc: Encoder) -> dict[str, Any] | None:
    """The meta of a complete shard directory made by this encoder; None if there is none."""
    if not all((dest / f).is_file() for f in FILES):
        return None
    try:
        meta = json.loads((dest / "meta.json").read_text())
    except json.JSONDecodeError:
        return None
    if meta.get("encoder") != enc.identity or meta.get("dim") != enc.embed_dim:
        return None
    return meta


def _current_meta(dest: Path, enc: Encoder, ids: np.ndarray) -> dict[str, Any] | None:
    """The meta of a complete shard directory made by this encoder for exactly these ok sample
    ids; None if there is no such directory."""
    meta = _stored_meta(dest, enc)
    if meta is None or meta.get("n") != len(ids):
        return None
    shapes = {np.load(dest / f, mmap_mode="r").shape for f in ("image.npy", "text.npy")}
    if shapes != {(len(ids), enc.embed_dim)} or not np.array_equal(np.load(dest / "sample_id.npy"), ids):
        return None
    return meta


def _subset_of_existing(dest: Path, enc: Encoder, ids: np.ndarray) -> dict[str, Any] | None:
    """Rewrite ``dest`` keeping the rows of ``ids`` when they are an ordered subset of the rows it
    holds from this encoder (nothing is encoded); None, touching nothing, when they are not."""
    if (meta := _stored_meta(dest, enc)) is None:
        return None
    where = {sid: i for i, sid in enumerate(np.load(dest / "sample_id.npy").tolist())}
    if any(sid not in where for sid in ids.tolist()):
        return None
    pos = np.array([where[sid] for sid in ids.tolist()], dtype=np.int64)
    if len(pos) and np.any(np.diff(pos) <= 0):
        return None
    remap = {int(old): new for new, old in enumerate(pos.tolist())}
    with atomic_dir(dest) as tmp:
        for name in ("image.npy", "text.npy"):
            np.save(tmp / name, np.load(dest / name, mmap_mode="r")[pos], allow_pickle=False)
        np.save(tmp / "sample_id.npy", ids, allow_pickle=False)
        meta = {**meta, "n": len(ids), "invalid_rows": {
            kind: [remap[r] for r in rows if r in remap] for kind, rows in meta["invalid_rows"].items()}}
        write_json(tmp / "meta.json", meta)
    return meta


def _embed_shard(
    enc: Encoder,
    shard: PoolShard,
    shards_dir: Path,
    ids: np.ndarray,
    dest: Path,
    batch_size: int,
    pool: Executor,
    depth: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the shard's four files into ``dest``; returns its meta. ``progress``: (rows encoded, rows)."""
    image_parts, text_parts = [], []
    batches = _chunks(iter_shard_pairs(shard, shards_dir), batch_size)
    to_tensors = lambda b: collate(b, enc.preprocess, enc.tokenizer)  # noqa: E731
    for images, tokens in prefetched(pool, to_tensors, batches, depth):
        with torch.inference_mode(), enc.autocast():
            image_parts.append(enc.model.encode_image(images.to(enc.device, non_blocking=True)).float().cpu())
            text_parts.append(enc.model.encode_text(tokens.to(enc.device, non_blocking=True)).float().cpu())
        if progress is not None:
            progress(sum(len(p) for p in image_parts), len(ids))
    image, bad_image = _normalised(image_parts, enc.embed_dim)
    text, bad_text = _normalised(text_parts, enc.embed_dim)
    if len(image) != len(ids):
        raise RuntimeError(f"{shard.name}: embedded {len(image)} pairs, manifest has {len(ids)} ok rows")
    for name, array in (("image.npy", image), ("text.npy", text), ("sample_id.npy", ids)):
        np.save(dest / name, array, allow_pickle=False)  # dest is atomic_dir's temporary directory
    meta = {
        "encoder": enc.identity,
        "shard": shard.name,
        "n": len(ids),
        "dim": enc.embed_dim,
        "dtype": "float16",
        "normalised": "l2",
        "invalid_rows": {"image": bad_image.tolist(), "text": bad_text.tolist()},
    }
    write_json(dest / "meta.json", meta)
    return meta


def _normalised(parts: list[torch.Tensor], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(x / ‖x‖₂ as float16 with invalid rows zeroed, positions of the invalid rows)."""
    x = torch.cat(parts) if parts else torch.zeros((0, dim))
    norms = torch.linalg.vector_norm(x, dim=1)
    valid = torch.isfinite(x).all(dim=1) & torch.isfinite(norms) & (norms > 0)
    unit = torch.where(valid[:, None], x / norms[:, None], torch.zeros(()))
    return unit.to(torch.float16).numpy(), np.flatnonzero(~valid.numpy())


def _chunks(items: Iterable[Pair], size: int) -> Iterator[list[Pair]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def prefetched(pool: Executor, fn: Callable[[A], B], items: Iterable[A], depth: int = 2) -> Iterator[B]:
    """``map(fn, items)`` in order, computing up to ``depth`` results ahead in ``pool``."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
