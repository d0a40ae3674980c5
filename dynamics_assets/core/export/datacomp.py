"""A plan as a DataComp subset file: what every DataComp filter outputs and its resharder consumes.

``write_subset(plan_dir, manifest_dir, out_root, pool=...)`` commits one version of the
artefact root ``out_root`` holding

  subset.npy   sorted, dtype exactly ``np.dtype("u8,u8")`` (fields ``f0``, ``f1``: DataComp's resharder
               asserts ``subset.dtype == np.dtype("u8,u8")``, so other field names are refused although
               the bytes are the same): each sample's 128-bit id as its high and low 64 bits; a sample
               planned with multiplicity k is listed k times (DataComp's resharder writes it k times);
  subset.json  rows, distinct, plan / pool / manifest versions, format;

with refs ``plan`` and ``manifest``. The plan's indices are positions in the pool order (the ok rows
of the manifest, parts by name then row); the ids are the manifest's ``sample_id`` — the DataComp
uid where the pool has one, else the project's 128-bit id (``manifest.content_sample_id``,
``precomputed.derived_sample_id``: also 32 hex characters, so also a valid subset entry).

A plan drawn on another pool is refused (``io.lineage.check_plan_inputs``: ``StalePlanError``; a manifest
other than the pool pins: ``LineageError``), as
is a plan whose pool (clusters version) was built from another manifest version than the one given.

Streaming: the plan is read through a memory map, the manifest part by part (only the parts holding
selected rows are opened); the selected uids go to up to ``MAX_BUCKETS`` temporary bucket files by
their top bits, and each bucket is sorted in memory and appended to the output — memory is one part
or one bucket (about ``bucket_rows`` rows; uids are hashes, so buckets are even), never the subset.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynamics_assets.core.ingest.pool import ok_sample_ids, pool_shards
from dynamics_assets.core.io import lineage, versions
from dynamics_assets.core.sample.plan_io import read_plan

SUBSET_DTYPE = np.dtype("u8,u8")  # exactly what DataComp's resharder asserts: fields f0 (high), f1 (low)
SUBSET_NAME = "subset.npy"
INFO_NAME = "subset.json"
MAX_BUCKETS = 256


@dataclass(frozen=True)
class SubsetSummary:
    version_dir: Path
    version_id: str
    path: Path  # the subset file
    rows: int  # entries, repeats counted
    distinct: int
    plan_version: str
    pool_version: str
    manifest_version: str


def uids_to_u8(ids: np.ndarray) -> np.ndarray:
    """'S32' hex ids -> ``SUBSET_DTYPE`` (vectorised: one ``bytes.fromhex`` over the whole array)."""
    ids = np.ascontiguousarray(np.asarray(ids, dtype="S32"))
    if ids.size == 0:
        return np.zeros(0, dtype=SUBSET_DTYPE)
    raw = np.frombuffer(bytes.fromhex(ids.tobytes().decode("ascii")), dtype=">u8").reshape(-1, 2)
    out = np.empty(len(ids), dtype=SUBSET_DTYPE)
    out["f0"], out["f1"] = raw[:, 0], raw[:, 1]
    return out


def u8_to_uids(subset: np.ndarray) -> list[str]:
    return [f"{int(a):016x}{int(b):016x}" for a, b in zip(subset["f0"], subset["f1"])]



def write_subset(plan_dir: str | os.PathLike, manifest_dir: str | os.PathLike, out_root: str | os.PathLike, *,
                 pool: str | os.PathLike, bucket_rows: int = 1 << 22) -> SubsetSummary:
    """Commit the DataComp subset file of the plan (see the module docstring); ``pool``:
    the clusters version (directory or id) the caller reads — the plan must have been drawn on it."""
    plan_dir = versions.resolve(plan_dir)
    manifest_dir = versions.resolve(manifest_dir)
    lineage.check_plan_inputs(plan_dir, pool, "export", manifest=manifest_dir)
    plan = read_plan(plan_dir, mmap=True)
    shards = pool_shards(manifest_dir)
    offsets = np.array([s.offset for s in shards] + [sum(s.n_ok for s in shards)], dtype=np.int64)
    n_pool = int(offsets[-1])
    indices, mult = plan.indices, plan.multiplicity
    if len(indices) and int(indices[-1]) >= n_pool:
        raise ValueError(f"plan {plan_dir} selects index {int(indices[-1])}; the manifest's pool has {n_pool} ok rows")
    rows = int(np.asarray(mult, dtype=np.int64).sum()) if len(mult) else 0
    n_buckets = min(MAX_BUCKETS, 1 << max(0, math.ceil(math.log2(max(1, math.ceil(rows / max(1, bucket_rows)))))))
    bits = int(math.log2(n_buckets))
    bounds = np.searchsorted(indices, offsets)
    art = versions.Artefact(out_root, "datacomp_subset")
    refs = versions.pinned(plan=plan_dir, manifest=manifest_dir)
    with tempfile.TemporaryDirectory(prefix="subset-buckets-") as tmp, art.write(refs=refs) as staging:
        files = [open(Path(tmp) / f"{b:03d}.bin", "wb") for b in range(n_buckets)]
        try:
            for shard, lo, hi in zip(shards, bounds[:-1], bounds[1:]):
                if hi <= lo:
                    continue  # no selected row here: the part is not opened
                local = np.asarray(indices[lo:hi], dtype=np.int64) - shard.offset
                uids = np.repeat(uids_to_u8(ok_sample_ids(shard)[local]), np.asarray(mult[lo:hi], dtype=np.int64))
                which = (uids["f0"] >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(len(uids), np.int64)
                for b in np.unique(which).tolist():
                    uids[which == b].tofile(files[b])
        finally:
            for f in files:
                f.close()
        written = 0
        with open(staging / SUBSET_NAME, "wb") as out:
            np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(SUBSET_DTYPE),
                                                       "fortran_order": False, "shape": (rows,)})
            for b in range(n_buckets):
                chunk = np.fromfile(Path(tmp) / f"{b:03d}.bin", dtype=SUBSET_DTYPE)
                chunk.sort(order=("f0", "f1"), kind="stable")
                chunk.tofile(out)
                written += len(chunk)
        if written != rows:
            raise RuntimeError(f"wrote {written} subset rows, the plan has {rows}")
        info = {"format": "datacomp-subset", "dtype": [list(d) for d in SUBSET_DTYPE.descr], "rows": rows,
                "distinct": int(len(indices)), "plan_version": plan_dir.name,
                "pool_version": str(plan.meta.get("pool_version")), "manifest_version": manifest_dir.name,
                "strategy": plan.meta.get("strategy"), "epoch": plan.meta.get("epoch")}
        (staging / INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return SubsetSummary(staging.version_dir, staging.version_id, staging.version_dir / SUBSET_NAME, rows,
                         int(len(indices)), plan_dir.name, info["pool_version"], manifest_dir.name)


def read_subset(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """The subset array of a file, a version directory or an artefact root; refuses a file of
    another dtype or not sorted."""
    p = Path(path)
    if p.is_dir():
        p = versions.resolve(p) / SUBSET_NAME
    subset = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    if subset.dtype != SUBSET_DTYPE or subset.ndim != 1:
        raise ValueError(f"{p}: expected a 1-d array of dtype np.dtype('u8,u8') (fields f0, f1, as DataComp's "
                         f"resharder asserts), got {subset.dtype} {subset.shape}")
    for s in range(0, len(subset), 1 << 22):
        part = np.asarray(subset[max(0, s - 1):s + (1 << 22)])
        hi, lo = part["f0"], part["f1"]
        if np.any((hi[1:] < hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] < lo[:-1]))):
            raise ValueError(f"{p}: not sorted")
    return subset


__all__ = ["SUBSET_DTYPE", "SubsetSummary", "read_subset", "u8_to_uids", "uids_to_u8", "write_subset"]
