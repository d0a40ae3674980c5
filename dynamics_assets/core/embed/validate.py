"""Invariants of a pool's embeddings: finite, unit-norm, of one dimension, every row accounted for."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dynamics_assets.core.io.arrays import npy_chunks
from dynamics_assets.core.io.findings import Findings, flagged
from dynamics_assets.core.embed.store import EMBEDDING_KINDS

NORM_TOLERANCE = 1e-2  # |‖x‖ − 1| allowed for a float16 unit vector
CHUNK_ROWS = 1 << 16  # embedding rows read at a time


def embedding_findings(embeddings_dir: str | Path, dim: int, n: int) -> Findings:
    """Every shard's image and text rows finite and unit-norm (a zero row listed in the shard's
    ``invalid_rows`` is a warning: it is quarantined at clustering), ``dim`` columns, ``n`` rows."""
    f = Findings()
    shards = sorted(p for p in Path(embeddings_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
    f.require(bool(shards), "no_shards", f"{embeddings_dir}: no shard directories")
    rows = 0
    for shard in shards:
        meta = json.loads((shard / "meta.json").read_text())
        rows += int(meta["n"])
        for kind in EMBEDDING_KINDS:
            path = shard / f"{kind}.npy"
            shape = np.load(path, mmap_mode="r").shape
            if len(shape) != 2 or shape[1] != dim or shape[0] != meta["n"]:
                f.error("wrong_shape", 1, [f"{path}: shape {shape}, expected ({meta['n']}, {dim})"])
                continue
            scan_rows(f, path, np.asarray(meta["invalid_rows"][kind], dtype=np.int64))
    f.require(rows == n, "row_count_mismatch", f"{rows} embedded rows, the record says {n}")
    f.facts.update(shards=len(shards), rows=rows, dim=dim)
    return f


def scan_rows(f: Findings, path: Path, listed: np.ndarray) -> None:
    """Non-finite rows, zero rows (listed in invalid_rows or not), rows off the unit sphere."""
    label = f"{path.parent.name}/{path.name}"
    for start, chunk in npy_chunks(path, CHUNK_ROWS):
        x = chunk.astype(np.float32)
        finite = np.isfinite(x).all(axis=1)
        zero = finite & ~x.any(axis=1)
        norm = np.linalg.norm(np.where(finite[:, None], x, 0.0), axis=1)
        off_sphere = finite & ~zero & (np.abs(norm - 1.0) >= NORM_TOLERANCE)
        is_listed = np.isin(np.arange(start, start + len(x)), listed)
        f.error("non_finite_rows", int((~finite).sum()), flagged(~finite, label, start))
        f.warn("quarantined_zero_rows", int((zero & is_listed).sum()), flagged(zero & is_listed, label, start))
        f.error("unlisted_zero_rows", int((zero & ~is_listed).sum()), flagged(zero & ~is_listed, label, start))
        f.error("not_unit_norm", int(off_sphere.sum()),
                (f"{label} row {int(i) + start}: norm {norm[i]:.4f}" for i in np.flatnonzero(off_sphere)))

