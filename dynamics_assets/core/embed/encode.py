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
Decoding, preprocessing and tokenising run in a ``torch.utils.data.DataLoader`` with
``num_workers`` worker processes (``ShardBatches``: worker w of n takes batches w, w+n, …; the
loader hands them over round-robin, so the order, and the bytes written, do not depend on
``num_workers``). An ok image that does not decode (a manifest built with ``decode: header``
accepts data that is corrupt after a valid header) gets a zero image row (an invalid row) and is
listed under ``undecodable`` in meta.json (``[{"row", "sample_id", "detail"}]``); the clustering
step quarantines it with the reason ``corrupt_image``.

Where the shards are encoded is the ``engine``'s business (``core.engine``): in this process, or
on a Ray actor pool with one encoder loaded per actor. Either way the shards' files are written by
this process in shard order from what the workers send back, so the artefacts are byte-identical.

Before a shard directory is reused, the files it shares (hardlinks) with the current version are
checked against that version's ``_version.json``: size, then sha256. A shard whose committed file
was truncated, lost, or edited in place is named (a warning, and ``EmbedSummary.damaged``),
dropped from the new version (its links only: the damaged version is not touched) and embedded
again, so a damaged shard is recomputed instead of failing every rerun; a stored file that does not
load is treated the same way.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

from dynamics_assets.core.io import versions
from dynamics_assets.core.io.atomic import atomic_dir, write_json
from dynamics_assets.core.io.progress import Progress, bar
from dynamics_assets.core.engine import Engine, resolve as resolve_engine
from dynamics_assets.core.model.clip import Encoder, EncoderSpec, load_encoder, resolve_weights
from dynamics_assets.core.model.devices import resolve_device, resolve_precision
from dynamics_assets.core.ingest.pool import (Pair, PoolShard, collate, input_side, iter_shard_pairs, ok_sample_ids,
                                              pool_shards)

FILES = ("image.npy", "text.npy", "sample_id.npy", "meta.json")

log = logging.getLogger(__name__)

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
    damaged: tuple[str, ...] = ()  # stored shard files found damaged (one line each, naming the file): re-embedded


def embed_shards(
    encoder: EncoderSpec | Encoder,
    manifest_dir: str | os.PathLike,
    shards_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    shards: Iterable[str] | None = None,
    num_workers: int = 0,
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> EmbedSummary:
    """Embed every shard of the pool (or the named ``shards``, by stem or tar name) into a new
    version of the artefact root ``out_dir`` (the summary names it).

    ``device`` is used when ``encoder`` is a spec; a loaded ``Encoder`` keeps its own device.
    ``manifest_dir``: the manifest version to embed (a root reads its current version).
    ``num_workers``: DataLoader worker processes decoding and preprocessing (0: in the encoding
    process); the embeddings do not depend on it. ``engine`` (``core.engine``; None: in this
    process) runs the shards to encode on an actor pool, one encoder per actor; the files are
    written here in shard order, so every engine writes the same bytes.
    ``progress`` gets ``(pairs done, ok pairs of the chosen shards)`` (default: ``io.progress.bar``).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    started = time.perf_counter()
    engine = resolve_engine(engine)
    if isinstance(encoder, Encoder):
        enc: Encoder | None = encoder
        spec, device = encoder.spec, str(encoder.device)
    else:
        spec, device = encoder, resolve_device(device)
        enc = load_encoder(spec, device) if engine.name == "local" else None
    identity, dim = (enc.identity, enc.embed_dim) if enc is not None else encoder_identity(spec, device)
    manifest_dir = versions.resolve(manifest_dir)
    all_shards = pool_shards(manifest_dir)
    todo = _chosen(all_shards, shards)
    pairs = invalid = subset = skipped = 0
    total, done = sum(s.n_ok for s in todo), 0
    progress = progress if progress is not None else bar("embed", "pair")
    art = versions.Artefact(out_dir, "embeddings")
    base = art.current()
    with art.write(base=base, resume=True, keep_on_error=True,
                   refs=versions.pinned(manifest=manifest_dir)) as staging:
        # the previous version's shards are the base; those not in this manifest (another pool,
        # embedded before in this data root) are not this version's
        pool_stems = {s.stem for s in all_shards}
        for stale in [d for d in staging.path.iterdir() if d.is_dir() and not d.name.startswith((".", "_"))
                      and d.name not in pool_stems]:
            shutil.rmtree(stale)
        # a reused shard is checked before it is trusted; a damaged one is dropped and embedded again
        damaged = _damaged_shards(staging.path, base)
        for stem, problems in damaged.items():
            log.warning("embeddings: %s; shard %s is embedded again", "; ".join(problems), stem)
            shutil.rmtree(staging.path / stem)  # its links only: the committed files are not touched
        chosen = {s.stem for s in todo}
        todo += [s for s in all_shards if s.stem in damaged and s.stem not in chosen]
        total = sum(s.n_ok for s in todo)
        to_embed: list[tuple[PoolShard, np.ndarray]] = []
        for shard in todo:  # shards already embedded (or whose rows are a subset of stored ones)
            dest = staging.path / shard.stem
            ids = ok_sample_ids(shard)
            try:
                meta = _current_meta(dest, identity, dim, ids)
                if meta is None:
                    meta = _subset_of_existing(dest, identity, dim, ids)
                    subset += meta is not None
                else:
                    skipped += 1
            except (ValueError, OSError, EOFError, KeyError) as e:
                # a stored file that does not load (written by an interrupted run of this staging
                # directory, so not recorded anywhere): named, and the shard embedded again
                log.warning("embeddings: %s: stored shard unreadable (%s); it is embedded again", dest, e)
                damaged.setdefault(shard.stem, []).append(f"{dest}: unreadable ({e})")
                shutil.rmtree(dest, ignore_errors=True)
                meta = None
            if meta is None:
                to_embed.append((shard, ids))
                continue
            invalid += _n_invalid(meta)
            done += shard.n_ok
        if progress is not None:
            progress(done, total)
        factory = ShardEmbedder(spec, device, str(shards_dir), batch_size, num_workers, enc)
        for outcome in engine.map_actors(factory, "embed", [shard for shard, _ in to_embed]):
            shard, ids = to_embed[outcome.index]
            result: ShardEmbedding = outcome.get()  # a shard that cannot be embedded stops the step
            with atomic_dir(staging.path / shard.stem) as tmp:
                meta = _write_shard(tmp, result, shard, ids, identity, dim)
            pairs += len(ids)
            invalid += _n_invalid(meta)
            done += shard.n_ok
            if progress is not None:
                progress(done, total)
    return EmbedSummary(len(todo), len(to_embed), skipped, pairs, invalid, dim,
                        time.perf_counter() - started, subset, staging.version_dir, staging.version_id,
                        staging.resumed, tuple(line for stem in sorted(damaged) for line in damaged[stem]))


def _damaged_shards(staging: Path, base: Path | None) -> dict[str, list[str]]:
    """``{shard: [problem naming the file, ...]}`` for the shard directories of ``staging`` that
    share a file with a committed version and do not match what ``base`` (the current version)
    recorded: a shared file of another size or sha256 (truncated, edited in place), a recorded file
    lost, a shared file ``base`` does not record (a link from an older version, unverifiable here).
    Files written by this staging directory's writers (one link) are new, not reuse."""
    recorded: dict[str, dict[str, Any]] = {}
    if base is not None:
        try:
            recorded = versions.version_info(base)["files"]
        except (OSError, ValueError, KeyError) as e:
            recorded = {}
            log.warning("embeddings: %s unreadable (%s): no stored shard can be checked", base / versions.VERSION_FILE, e)
            base = None
    where = f" (embeddings version {base.name})" if base is not None else ""
    out: dict[str, list[str]] = {}
    for shard in sorted(d for d in staging.iterdir() if d.is_dir() and not d.name.startswith((".", "_"))):
        problems = []
        for path in sorted(p for p in shard.rglob("*") if p.is_file() and not p.name.startswith(".")):
            rel = path.relative_to(staging).as_posix()
            st = os.stat(path)
            rec = recorded.get(rel)
            committed = base / rel if base is not None else None
            try:
                shared = committed is not None and os.path.samestat(st, os.stat(committed))
            except OSError:
                shared = False
            if shared and rec is not None:
                if st.st_size != rec["size"]:
                    problems.append(f"{committed}{where}: {st.st_size} bytes, its version recorded {rec['size']}")
                elif versions._sha256(path) != rec["sha256"]:
                    problems.append(f"{committed}{where}: content differs from its recorded sha256 (edited in place)")
            elif shared or st.st_nlink > 1:
                problems.append(f"{path}: shared with a committed version that does not record it; not reused")
        for rel in recorded:
            if rel.startswith(f"{shard.name}/") and not (staging / rel).exists() and base is not None:
                problems.append(f"{base / rel}{where}: missing")
        if problems:
            out[shard.name] = problems
    return out


def encoder_identity(spec: EncoderSpec, device: str) -> tuple[dict[str, str], int]:
    """``(identity, embedding dim)`` of the encoder a spec loads on ``device``, without loading it
    (what ``Encoder.identity`` / ``Encoder.embed_dim`` give once loaded)."""
    import open_clip

    _, weights_id = resolve_weights(spec)
    precision = resolve_precision(spec.precision, torch.device(device).type)
    identity = {"model_name": spec.model_name, "weights": weights_id, "precision": precision}
    return identity, int(open_clip.get_model_config(spec.model_name)["embed_dim"])


def _n_invalid(meta: dict[str, Any]) -> int:
    return len(set(meta["invalid_rows"]["image"]) | set(meta["invalid_rows"]["text"]))


def _chosen(all_shards: list[PoolShard], names: Iterable[str] | None) -> list[PoolShard]:
    if names is None:
        return all_shards
    wanted = set(names)
    chosen = [s for s in all_shards if s.stem in wanted or s.name in wanted]
    unknown = wanted - {s.stem for s in chosen} - {s.name for s in chosen}
    if unknown:
        raise ValueError(f"shards not in the pool: {sorted(unknown)[:5]}")
    return chosen


def _stored_meta(dest: Path, identity: dict[str, str], dim: int) -> dict[str, Any] | None:
    """The meta of a complete shard directory made by this encoder; None if there is none."""
    if not all((dest / f).is_file() for f in FILES):
        return None
    try:
        meta = json.loads((dest / "meta.json").read_text())
    except json.JSONDecodeError:
        return None
    if meta.get("encoder") != identity or meta.get("dim") != dim:
        return None
    return meta


def _current_meta(dest: Path, identity: dict[str, str], dim: int, ids: np.ndarray) -> dict[str, Any] | None:
    """The meta of a complete shard directory made by this encoder for exactly these ok sample
    ids; None if there is no such directory."""
    meta = _stored_meta(dest, identity, dim)
    if meta is None or meta.get("n") != len(ids):
        return None
    shapes = {np.load(dest / f, mmap_mode="r").shape for f in ("image.npy", "text.npy")}
    if shapes != {(len(ids), dim)} or not np.array_equal(np.load(dest / "sample_id.npy"), ids):
        return None
    return meta


def _subset_of_existing(dest: Path, identity: dict[str, str], dim: int, ids: np.ndarray) -> dict[str, Any] | None:
    """Rewrite ``dest`` keeping the rows of ``ids`` when they are an ordered subset of the rows it
    holds from this encoder (nothing is encoded); None, touching nothing, when they are not."""
    if (meta := _stored_meta(dest, identity, dim)) is None:
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
        if "undecodable" in meta:
            meta["undecodable"] = [{**u, "row": remap[u["row"]]} for u in meta["undecodable"] if u["row"] in remap]
        write_json(tmp / "meta.json", meta)
    return meta


@dataclass(frozen=True)
class ShardEmbedding:
    """One shard's embeddings as computed (what an engine's worker sends back)."""

    image: np.ndarray  # (n, D) float16, unit rows, invalid rows zero
    text: np.ndarray
    bad_image: np.ndarray  # positions of the invalid rows
    bad_text: np.ndarray
    undecodable: list[dict[str, Any]]  # [{"row": local ok position, "sample_id", "detail"}]


class ShardEmbedder:
    """Embeds whole shards with one encoder, loaded once (``engine.map_actors``' worker factory:
    picklable while ``encoder`` is None; calling it gives the worker, itself)."""

    def __init__(self, spec: EncoderSpec, device: str, shards_dir: str, batch_size: int, num_workers: int,
                 encoder: Encoder | None = None) -> None:
        self.spec, self.device, self.shards_dir = spec, device, shards_dir
        self.batch_size, self.num_workers = batch_size, num_workers
        self.encoder = encoder

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "encoder": None}  # an actor loads its own

    def __call__(self) -> "ShardEmbedder":
        if self.encoder is None:
            self.encoder = load_encoder(self.spec, self.device)
        return self

    def embed(self, shard: PoolShard) -> ShardEmbedding:
        enc = self().encoder
        assert enc is not None
        image_parts, text_parts, undecodable = [], [], []
        batches = ShardBatches(shard, self.shards_dir, self.batch_size, enc.preprocess, enc.tokenizer)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=self.num_workers,
                                             persistent_workers=False)
        expected = 0
        for index, images, tokens, bad in loader:
            if index != expected:  # the DataLoader yields the workers' batches round-robin: in order
                raise RuntimeError(f"{shard.name}: batch {index} arrived where batch {expected} belongs")
            expected += 1
            with torch.inference_mode(), enc.autocast():
                image = enc.model.encode_image(images.to(enc.device, non_blocking=True)).float().cpu()
                text = enc.model.encode_text(tokens.to(enc.device, non_blocking=True)).float().cpu()
                for b in bad:
                    image[b["row"] - index * self.batch_size] = 0.0  # zero: an invalid row, quarantined later
            image_parts.append(image)
            text_parts.append(text)
            undecodable += bad
        if expected != batches.n_batches:
            raise RuntimeError(f"{shard.name}: {expected} batches encoded, {batches.n_batches} expected")
        image, bad_image = _normalised(image_parts, enc.embed_dim)
        text, bad_text = _normalised(text_parts, enc.embed_dim)
        return ShardEmbedding(image, text, bad_image, bad_text, undecodable)


class ShardBatches(torch.utils.data.IterableDataset):
    """The batches of one shard's ok pairs as ``(batch index, images, tokens, undecodable)``.

    Worker ``w`` of ``n`` reads and decodes the batches ``w, w + n, w + 2n, …`` (only those images:
    the manifest's offsets locate them), and the DataLoader takes one batch from each worker in
    turn, so the batches arrive in shard order whatever ``num_workers`` is, each decoded and
    preprocessed exactly as in-process. An image that does not decode (possible when the manifest
    read headers only) becomes a zero image and a record ``{"row", "sample_id", "detail"}``."""

    def __init__(self, shard: PoolShard, shards_dir: str | Path, batch_size: int,
                 preprocess: Callable[[Any], torch.Tensor], tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shard, self.shards_dir, self.batch_size = shard, Path(shards_dir), batch_size
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.n_batches = -(-shard.n_ok // batch_size)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, list[dict[str, Any]]]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        mine = range(worker, self.n_batches, workers)
        if not len(mine):
            return
        bounds = [(i * self.batch_size, min((i + 1) * self.batch_size, self.shard.n_ok)) for i in mine]
        local = np.concatenate([np.arange(lo, hi) for lo, hi in bounds])
        pairs = iter_shard_pairs(self.shard, self.shards_dir, local)
        for i, (lo, hi) in zip(mine, bounds):
            yield (i, *self._collate(list(islice(pairs, hi - lo)), lo))

    def _collate(self, batch: list[Pair], first_row: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        try:
            images, tokens = collate(batch, self.preprocess, self.tokenizer)
            return images, tokens, []
        except ValueError:  # find the pair(s) that do not decode; the others are preprocessed as usual
            pass
        tensors, bad = [], []
        for j, pair in enumerate(batch):
            try:
                tensors.append(collate([pair], self.preprocess, self.tokenizer)[0][0])
            except ValueError as err:
                tensors.append(None)
                bad.append({"row": first_row + j, "sample_id": pair.sample_id, "detail": str(err)})
        shape = next((t.shape for t in tensors if t is not None), None)
        if shape is None:
            side = input_side(self.preprocess) or 224
            shape = (3, side, side)
        images = torch.stack([t if t is not None else torch.zeros(shape) for t in tensors])
        return images, self.tokenizer([p.caption for p in batch]), bad


def _write_shard(dest: Path, result: ShardEmbedding, shard: PoolShard, ids: np.ndarray,
                 identity: dict[str, str], dim: int) -> dict[str, Any]:
    """Write the shard's four files into ``dest`` (atomic_dir's temporary directory); its meta."""
    if len(result.image) != len(ids) or len(result.text) != len(ids):
        raise RuntimeError(f"{shard.name}: embedded {len(result.image)} pairs, manifest has {len(ids)} ok rows")
    for name, array in (("image.npy", result.image), ("text.npy", result.text), ("sample_id.npy", ids)):
        np.save(dest / name, array, allow_pickle=False)
    meta = {
        "encoder": identity,
        "shard": shard.name,
        "n": len(ids),
        "dim": dim,
        "dtype": "float16",
        "normalised": "l2",
        "invalid_rows": {"image": result.bad_image.tolist(), "text": result.bad_text.tolist()},
    }
    if result.undecodable:
        meta["undecodable"] = result.undecodable
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
