"""A plan on disk: a directory written atomically with

  indices.npy       sorted sample indices (uint32, or int64 for pools ≥ 2^32) — read sequentially;
  multiplicity.npy  uint16, aligned with indices (how many times each sample is seen);
  clusters.parquet  cluster_id, size, expected, realised (with multiplicity), distinct;
  plan.json         strategy, parameters, seed, epoch, pool size, budget, realised size.

6 bytes per planned sample. Same inputs → byte-identical files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dynamics_assets.core.io.atomic import atomic_dir
from dynamics_assets.core.sample.base import Plan


def cluster_table(plan: Plan, distinct: np.ndarray | None = None) -> pa.Table:
    k = len(plan.cluster_size)
    return pa.table({
        "cluster_id": pa.array(np.arange(k, dtype=np.int32)),
        "size": pa.array(plan.cluster_size.astype(np.int64)),
        "expected": pa.array(plan.cluster_expected.astype(np.float64)),
        "realised": pa.array(plan.cluster_realised.astype(np.int64)),
    })


def plan_meta(plan: Plan) -> dict:
    return {**plan.meta, "realised": plan.size, "distinct": int(len(plan.indices)),
            "max_multiplicity": int(plan.multiplicity.max(initial=0))}


def write_plan(path: str | Path, plan: Plan) -> Path:
    path = Path(path)
    with atomic_dir(path) as tmp:
        np.save(tmp / "indices.npy", plan.indices, allow_pickle=False)
        np.save(tmp / "multiplicity.npy", plan.multiplicity.astype(np.uint16), allow_pickle=False)
        pq.write_table(cluster_table(plan), tmp / "clusters.parquet")
        (tmp / "plan.json").write_text(json.dumps(plan_meta(plan), indent=2, sort_keys=True, default=_plain) + "\n")
    return path


def read_plan(path: str | Path, *, mmap: bool = False) -> Plan:
    path = Path(path)
    mode = "r" if mmap else None
    clusters = pq.read_table(path / "clusters.parquet")
    meta = json.loads((path / "plan.json").read_text())
    return Plan(
        indices=np.load(path / "indices.npy", mmap_mode=mode),
        multiplicity=np.load(path / "multiplicity.npy", mmap_mode=mode),
        cluster_size=clusters["size"].to_numpy(),
        cluster_expected=clusters["expected"].to_numpy(),
        cluster_realised=clusters["realised"].to_numpy(),
        meta=meta,
    )


def _plain(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-serialisable: {type(x)}")
