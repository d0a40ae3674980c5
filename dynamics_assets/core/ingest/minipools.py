"""Small pools in the exact on-disk layouts of DataComp CommonPool and LAION / clip-retrieval,
with embeddings drawn around a few cluster centres and planted problems — for tests and demos of
``ingest.precomputed``.

``write_datacomp_pool(dir)``: ``dir/metadata/<hash>.parquet`` + ``<hash>.npz`` (``b32_img``,
``b32_txt`` 512-d and ``l14_img``, ``l14_txt`` 768-d, float16, L2-normalised); parquet columns
``uid`` (32 hex), ``url``, ``text``, ``original_width``, ``original_height``,
``clip_b32_similarity_score``, ``clip_l14_similarity_score``, ``face_bboxes``, ``sha256``.
Planted: a bad uid, a uid repeated in a later part, a NaN image-embedding row, an empty caption.

``write_laion_pool(dir)``: ``img_emb/img_emb_N.npy``, ``text_emb/text_emb_N.npy``,
``metadata/metadata_N.parquet`` (columns ``url``, ``caption``, ``similarity``, ``key``, ``width``,
``height``; no uid) with N = 0..parts-1. Planted: a missing caption, a repeated (url, caption) in a
later part, a zero text-embedding row, a row without url.

Each returns a ``MiniPool``: the planted rows by reason and the expected ok sample ids in pool order.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dynamics_assets.core.ingest.precomputed import derived_sample_id

CONCEPTS = ("red triangle", "blue circle", "green square", "yellow star", "purple hexagon", "orange heart")


@dataclass
class MiniPool:
    root: Path
    layout: str
    rows: int
    parts: list[str]  # part names as the manifest names them, in pool order
    planted: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # reason -> [(part, row)]
    ok_ids: list[str] = field(default_factory=list)  # expected ok sample ids, pool order
    concept: dict[str, str] = field(default_factory=dict)  # sample id -> concept of the ok rows


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _around(rng: np.random.Generator, centres: np.ndarray, labels: np.ndarray, noise: float) -> np.ndarray:
    d = centres.shape[1]
    return _unit(centres[labels] + noise * rng.standard_normal((len(labels), d)) / np.sqrt(d)).astype(np.float16)


def write_datacomp_pool(out: str | Path, *, parts: int = 3, rows_per_part: int = 120, centres: int = 4,
                        seed: int = 0, noise: float = 0.5) -> MiniPool:
    """A DataComp-layout pool in ``out/metadata/`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    meta_dir = Path(out) / "metadata"
    meta_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(hashlib.sha256(f"part-{seed}-{i}".encode()).hexdigest()[:32] for i in range(parts))
    c32, c14 = _unit(rng.standard_normal((centres, 512))), _unit(rng.standard_normal((centres, 768)))
    pool = MiniPool(Path(out), "datacomp", parts * rows_per_part, names,
                    {r: [] for r in ("bad_uid", "duplicate_sample_id", "invalid_embedding", "empty_caption")})
    first_uid = None
    for p, name in enumerate(names):
        n = rows_per_part
        labels = rng.integers(0, centres, n)
        uids = [hashlib.md5(f"{seed}-{p}-{i}".encode()).hexdigest() for i in range(n)]
        texts = [f"a photo of a {CONCEPTS[c]} number {i}" for i, c in enumerate(labels)]
        b32_img, b32_txt = _around(rng, c32, labels, noise), _around(rng, c32, labels, noise)
        l14_img, l14_txt = _around(rng, c14, labels, noise), _around(rng, c14, labels, noise)
        bad: dict[int, str] = {}
        if p == 0:
            first_uid = uids[0]
            uids[3] = "not-a-uid"; bad[3] = "bad_uid"  # noqa: E702
            texts[5] = "   "; bad[5] = "empty_caption"  # noqa: E702
        if p == 1:
            b32_img[7, 11] = np.nan; l14_img[7, 11] = np.nan; bad[7] = "invalid_embedding"  # noqa: E702
        if p == parts - 1:
            uids[9] = first_uid.upper(); bad[9] = "duplicate_sample_id"  # noqa: E702  (ids are lowercased)
        for row, reason in sorted(bad.items()):
            pool.planted[reason].append((name, row))
        for i in range(n):
            if i not in bad:
                pool.ok_ids.append(uids[i].lower())
                pool.concept[uids[i].lower()] = CONCEPTS[labels[i]]
        table = pa.table({
            "uid": pa.array(uids, pa.string()),
            "url": pa.array([f"https://example.com/{name}/{i}.jpg" for i in range(n)], pa.string()),
            "text": pa.array(texts, pa.string()),
            "original_width": pa.array(rng.integers(64, 1024, n), pa.int64()),
            "original_height": pa.array(rng.integers(64, 1024, n), pa.int64()),
            "clip_b32_similarity_score": pa.array(rng.uniform(0.1, 0.4, n), pa.float32()),
            "clip_l14_similarity_score": pa.array(rng.uniform(0.1, 0.4, n), pa.float32()),
            "face_bboxes": pa.array([[] if i % 7 else [[0.1, 0.1, 0.3, 0.4]] for i in range(n)],
                                    pa.list_(pa.list_(pa.float64()))),
            "sha256": pa.array([hashlib.sha256(f"img-{u}".encode()).hexdigest() for u in uids], pa.string()),
        })
        pq.write_table(table, meta_dir / f"{name}.parquet")
        np.savez(meta_dir / f"{name}.npz", b32_img=b32_img, b32_txt=b32_txt, l14_img=l14_img, l14_txt=l14_txt)
    return pool


def write_laion_pool(out: str | Path, *, parts: int = 2, rows_per_part: int = 150, centres: int = 4, dim: int = 512,
                     seed: int = 1, noise: float = 0.5) -> MiniPool:
    """A LAION / clip-retrieval-layout pool in ``out`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    root = Path(out)
    for d in ("img_emb", "text_emb", "metadata"):
        (root / d).mkdir(parents=True, exist_ok=True)
    cs = _unit(rng.standard_normal((centres, dim)))
    names = [f"metadata_{i:06d}" for i in range(parts)]
    pool = MiniPool(root, "laion", parts * rows_per_part, names,
                    {r: [] for r in ("bad_uid", "missing_caption", "invalid_embedding", "duplicate_sample_id")})
    first = None
    for p in range(parts):
        n = rows_per_part
        labels = rng.integers(0, centres, n)
        urls: list[str | None] = [f"http://laion.example/{p}/{i}.jpg" for i in range(n)]
        captions: list[str | None] = [f"{CONCEPTS[c]} on a table, picture {p}-{i}" for i, c in enumerate(labels)]
        img, txt = _around(rng, cs, labels, noise), _around(rng, cs, labels, noise)
        bad: dict[int, str] = {}
        if p == 0:
            first = (urls[2], captions[2])
            captions[4] = None; bad[4] = "missing_caption"  # noqa: E702
            urls[6] = None; bad[6] = "bad_uid"  # noqa: E702
        if p == parts - 1:
            urls[8], captions[8] = first; bad[8] = "duplicate_sample_id"  # noqa: E702
            txt[10] = 0; bad[10] = "invalid_embedding"  # noqa: E702
        for row, reason in sorted(bad.items()):
            pool.planted[reason].append((names[p], row))
        for i in range(n):
            if i not in bad:
                sid = derived_sample_id(urls[i], captions[i])
                pool.ok_ids.append(sid)
                pool.concept[sid] = CONCEPTS[labels[i]]
        table = pa.table({
            "url": pa.array(urls, pa.string()),
            "caption": pa.array(captions, pa.string()),
            "similarity": pa.array(rng.uniform(0.28, 0.4, n), pa.float64()),
            "key": pa.array([f"{p:05d}{i:04d}" for i in range(n)], pa.string()),
            "width": pa.array(rng.integers(64, 1024, n), pa.int64()),
            "height": pa.array(rng.integers(64, 1024, n), pa.int64()),
        })
        pq.write_table(table, root / "metadata" / f"metadata_{p}.parquet")
        np.save(root / "img_emb" / f"img_emb_{p}.npy", img)
        np.save(root / "text_emb" / f"text_emb_{p}.npy", txt)
    return pool


__all__ = ["CONCEPTS", "MiniPool", "write_datacomp_pool", "write_laion_pool"]
