"""Invariants of a sample plan (the guarantees its sampler states on the plan)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dynamics_assets.core.io.arrays import npy_chunks
from dynamics_assets.core.io.findings import Findings, flagged

CHUNK_ITEMS = 1 << 22  # plan indices / cluster ids read at a time
EXACT_MODES = ("exact", "upsample")  # plan modes whose size is exactly the budget


def final_sampler(meta: dict) -> tuple[str | None, dict]:
    """(strategy, params) of the sampler that drew the plan: the last step of a composition."""
    params = meta.get("params", {})
    if params.get("steps"):
        last = params["steps"][-1]
        return last.get("strategy"), last
    return meta.get("strategy"), params


def multiplicity_limit(meta: dict) -> int:
    """The most times a plan may show one sample: max_repeat in DynamiCS upsample mode,
    otherwise ⌈budget / pool⌉ (1 unless a uniform budget exceeds the pool)."""
    strategy, params = final_sampler(meta)
    if strategy == "dynamics" and params.get("mode") == "upsample" and "reduced_to" not in meta:
        return int(params["max_repeat"])
    if meta.get("budget") is None:
        return 1
    return max(1, math.ceil(int(meta["budget"]) / max(1, int(meta["pool_size"]))))


def plan_findings(plan_dir: str | Path, clusters_dir: str | Path, k: int,
                  pool_fingerprint: str | None = None) -> Findings:
    """plan.json agrees with the files; exact modes realise the budget; multiplicities in
    [1, limit]; indices sorted, unique, inside the pool and never quarantined; no non-empty
    cluster starved when the budget covers one draw per cluster (DynamiCS exact/upsample).
    Compositions are judged by their last step (the sampler that drew the epoch)."""
    f = Findings()
    plan_dir = Path(plan_dir)
    meta = json.loads((plan_dir / "plan.json").read_text())
    strategy, params = final_sampler(meta)
    mode = params.get("mode")
    budget, limit = meta.get("budget"), multiplicity_limit(meta)
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
    if mode in EXACT_MODES and budget is not None:
        f.require(size == budget, "size_differs_from_budget", f"mode {mode}: {size} samples, budget {budget}")
    sizes = pq.read_table(plan_dir / "clusters.parquet", columns=["size"]).column("size").to_numpy()
    f.require(len(sizes) == k, "cluster_count_mismatch", f"clusters.parquet has {len(sizes)} clusters, k = {k}")
    nonempty = sizes[:k] > 0
    if (strategy == "dynamics" and mode in EXACT_MODES and "reduced_to" not in meta and budget is not None
            and budget >= int(nonempty.sum())):
        starved = np.flatnonzero(nonempty & (realised[:len(nonempty)] == 0))
        f.error("starved_clusters", len(starved), (f"cluster {c} (size {int(sizes[c])})" for c in starved))
    if pool_fingerprint is not None:
        f.require(meta.get("pool_fingerprint") == pool_fingerprint, "stale_pool",
                  f"plan drawn on pool {meta.get('pool_fingerprint')}, clusters are {pool_fingerprint}")
    f.facts.update(strategy=str(meta.get("strategy")), mode=str(mode), budget=str(budget), realised=size,
                   distinct=n_idx, max_multiplicity_allowed=limit, nonempty_clusters=int(nonempty.sum()))
    return f

