"""Invariants of a cluster assignment: every embedded pair assigned or quarantined, ids below k."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dynamics_assets.core.io.arrays import npy_chunks
from dynamics_assets.core.io.findings import Findings
from dynamics_assets.core.embed.store import EmbeddingStore

CHUNK_ITEMS = 1 << 22  # cluster ids read at a time


def cluster_findings(clusters_dir: str | Path, k: int, embeddings_dir: str | Path) -> Findings:
    """Assigned (0 ≤ id < k) + quarantined rows = rows of cluster_id.npy = embedded pairs."""
    f = Findings()
    path = Path(clusters_dir) / "cluster_id.npy"
    assigned = total = 0
    for start, ids in npy_chunks(path, CHUNK_ITEMS):
        bad = (ids < -1) | (ids >= k)
        f.error("cluster_id_out_of_range", int(bad.sum()),
                (f"cluster_id.npy row {int(i) + start}: {int(ids[i])}" for i in np.flatnonzero(bad)))
        assigned += int(((ids >= 0) & ~bad).sum())
        total += len(ids)
    quarantined = pq.ParquetFile(Path(clusters_dir) / "quarantine.parquet").metadata.num_rows
    embedded = len(EmbeddingStore(embeddings_dir))
    f.require(assigned + quarantined == total, "unaccounted_samples",
              f"{assigned} assigned + {quarantined} quarantined ≠ {total} rows of cluster_id.npy")
    f.require(total == embedded, "pool_size_mismatch", f"cluster_id.npy has {total} rows, {embedded} pairs embedded")
    f.facts.update(assigned=assigned, quarantined=quarantined, rows=total, embedded=embedded, k=k)
    return f

