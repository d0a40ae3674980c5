"""Invariants of a sample plan (the guarantees its sampler states on the plan)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dynamics_assets.core.io.arrays import npy_chunks
from dynamics_assets.core.io.findings import Findings, flagged

CHUNK_ITEMS = 1 << 22  # plan indices / cluster ids read at a time


def plan_findings(plan_dir: str | Path, clusters_dir: str | Path, k: int,
                  pool_version: str | None = None) -> Findings:
    """plan.json agrees with the files, and the plan keeps the guarantees its sampler stated in
    ``plan.json["guarantees"]`` (``sample.base.guarantees``): the budget realised exactly,
    multiplicities in [1, max_multiplicity], no non-empty cluster starved. Always: indices sorted,
    unique, inside the pool and never quarantined. No strategy is named here."""
    f = Findings()
    plan_dir = Path(plan_dir)
    meta = json.loads((plan_dir / "plan.json").read_text())
    promised = meta.get("guarantees")
    if promised is None:
        f.error("no_guarantees", 1, [f"{plan_dir}/plan.json states no guarantees (drawn by an older version?)"])
        return f
    budget, limit = meta.get("budget"), int(promised["max_multiplicity"])
    cluster_id_path = Path(clusters_dir) / "cluster_id.npy"
    pool_size = len(np.load(cluster_id_path, mmap_mode="r"))
    n_idx = len(np.load(plan_dir / "indices.npy", mmap_mode="r"))
    n_mult = len(np.load(plan_dir / "multiplicity.npy", mmap_mode="r"))
    f.require(n_idx == n_mult, "misaligned", f"{n_idx} indices, {n_mult} multiplicities")
    realised = np.zeros(k, dtype=np.int64)
    previous = -1
    for (start, idx), (_, mult) in zip(npy_chunks(plan_dir / "indices.npy", CHUNK_ITEMS),
                                       npy_chunks(plan_dir / "multiplicity.npy", CHUNK_ITEMS)):
        idx, mult = idx.astype(np.int64), mult.astype(np.int64)
        f.error("multiplicity_below_1", int((mult < 1).sum()), flagged(mult < 1, "multiplicity.npy", start))
        f.error("multiplicity_above_limit", int((mult > limit).sum()), flagged(mult > limit, "multiplicity.npy", start))
        unsorted = np.diff(np.concatenate([[previous], idx])) <= 0
        f.error("not_sorted_unique", int(unsorted.sum()), flagged(unsorted, "indices.npy", start))
        previous = int(idx[-1])
        in_pool = (idx >= 0) & (idx < pool_size)
        f.error("index_outside_pool", int((~in_pool).sum()), flagged(~in_pool, "indices.npy", start))
        ids = np.full(len(idx), -1, dtype=np.int64)
        ids[in_pool] = np.load(cluster_id_path, mmap_mode="r")[idx[in_pool]]  # re-mapped per chunk
        f.error("quarantined_sample_planned", int((in_pool & (ids < 0)).sum()),
                flagged(in_pool & (ids < 0), "indices.npy", start))
        ok = (ids >= 0) & (ids < k)
        realised += np.bincount(ids[ok], weights=mult[ok], minlength=k).astype(np.int64)
    size = int(realised.sum())
    f.require(size == int(meta["realised"]), "realised_mismatch", f"plan.json realised {meta['realised']}, files {size}")
    if promised["exact_budget"] and budget is not None:
        f.require(size == budget, "size_differs_from_budget", f"{size} samples, budget {budget}")
    sizes = pq.read_table(plan_dir / "clusters.parquet", columns=["size"]).column("size").to_numpy()
    f.require(len(sizes) == k, "cluster_count_mismatch", f"clusters.parquet has {len(sizes)} clusters, k = {k}")
    nonempty = sizes[:k] > 0
    if promised["every_cluster_drawn"]:
        starved = np.flatnonzero(nonempty & (realised[:len(nonempty)] == 0))
        f.error("starved_clusters", len(starved), (f"cluster {c} (size {int(sizes[c])})" for c in starved))
    if pool_version is not None:
        f.require(meta.get("pool_version") == pool_version, "stale_pool",
                  f"plan drawn on pool version {meta.get('pool_version')}, the pool is version {pool_version}")
    f.facts.update(strategy=str(meta.get("strategy")), budget=str(budget), realised=size,
                   exact_budget=bool(promised["exact_budget"]), every_cluster_drawn=bool(promised["every_cluster_drawn"]),
                   distinct=n_idx, max_multiplicity_allowed=limit, nonempty_clusters=int(nonempty.sum()))
    return f

