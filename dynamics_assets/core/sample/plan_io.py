"""A plan on disk: one committed version (``io.versions``) of the plan's artefact root, holding

  indices.npy       sorted sample indices (uint32, or int64 for pools ≥ 2^32) — read sequentially;
  multiplicity.npy  uint16, aligned with indices (how many times each sample is seen);
  clusters.parquet  cluster_id, size, expected, realised (with multiplicity), distinct;
  plan.json         strategy, parameters, seed, epoch, pool size, budget, realised size, and
                    ``pool_version``: the clusters version whose pool positions ``indices`` are.

6 bytes per planned sample. Same inputs → byte-identical files and the same version id.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dynamics_assets.core.io import versions
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


def write_plan(path: str | Path, plan: Plan, *, pool_version: str | Path | None = None,
               extras: Callable[[Path], None] | None = None) -> Path:
    """Commit the plan as a new version of the artefact root ``path``; returns the version directory.

    ``pool_version``: the clusters version directory the plan was drawn on (recorded in plan.json
    and pinned as the version's ``pool`` ref), or a bare version id (recorded only); default: the
    ``pool_version`` already in ``plan.meta``, if any. ``extras(staging_dir)`` may add files (a plot)
    to the same version before it is committed.
    """
    meta = plan_meta(plan)
    refs = {}
    if pool_version is not None:
        refs = versions.pinned(pool=pool_version)
        meta["pool_version"] = versions.version_id(pool_version) if refs else str(pool_version)
    with versions.Artefact(path).write(refs=refs) as tmp:
        np.save(tmp / "indices.npy", plan.indices, allow_pickle=False)
        np.save(tmp / "multiplicity.npy", plan.multiplicity.astype(np.uint16), allow_pickle=False)
        pq.write_table(cluster_table(plan), tmp / "clusters.parquet")
        (tmp / "plan.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=_plain) + "\n")
        if extras is not None:
            extras(tmp.path)
    return tmp.version_dir


class InvalidPlanError(ValueError):
    """A plan whose files break the plan format (named with the first offending entries)."""


def read_plan(path: str | Path, *, mmap: bool = False, validate: bool = True) -> Plan:
    """The plan in a version directory (an artefact root reads its current version).

    ``validate``: the format is checked as it is read, chunk by chunk — integer indices strictly
    increasing (compared as int64: uint32 differences would wrap around and hide a step back),
    multiplicities ≥ 1 and aligned with them, and their sum equal to ``plan.json``'s ``realised``
    — so a damaged or hand-edited plan is refused by whatever reads it (training, exports), with
    an ``InvalidPlanError`` naming the file and the first bad entries.

    A committed plan's files are first checked against its ``_version.json`` (sizes and sha256:
    a plan is 6 bytes per planned sample), so a plan file edited in place — even one that still
    reads as a valid plan — is refused with ``versions.DamagedArtefact`` naming the file."""
    path = versions.open_checked(path, hashed=True)
    mode = "r" if mmap else None
    clusters = pq.read_table(path / "clusters.parquet")
    meta = json.loads((path / "plan.json").read_text())
    plan = Plan(
        indices=np.load(path / "indices.npy", mmap_mode=mode),
        multiplicity=np.load(path / "multiplicity.npy", mmap_mode=mode),
        cluster_size=clusters["size"].to_numpy(),
        cluster_expected=clusters["expected"].to_numpy(),
        cluster_realised=clusters["realised"].to_numpy(),
        meta=meta,
    )
    if validate:
        check_plan_format(plan, path)
    return plan


def check_plan_format(plan: Plan, where: str | Path, chunk: int = 1 << 22) -> None:
    idx, mult = plan.indices, plan.multiplicity
    problems = []
    if idx.ndim != 1 or mult.ndim != 1 or len(idx) != len(mult):
        problems.append(f"indices {idx.shape} and multiplicity {mult.shape} are not two aligned 1-d arrays")
    elif not np.issubdtype(idx.dtype, np.integer) or not np.issubdtype(mult.dtype, np.integer):
        problems.append(f"indices ({idx.dtype}) and multiplicity ({mult.dtype}) must be integers")
    else:
        previous, total = -1, 0
        for s in range(0, len(idx), chunk):
            i = np.asarray(idx[s:s + chunk]).astype(np.int64)
            m = np.asarray(mult[s:s + chunk]).astype(np.int64)
            steps = np.diff(np.concatenate([[previous], i]))
            if (bad := np.flatnonzero(steps <= 0)).size:
                problems.append(f"indices not strictly increasing at entries {(bad[:3] + s).tolist()}")
                break
            if (i < 0).any():
                problems.append("negative indices")
                break
            if (bad := np.flatnonzero(m < 1)).size:
                problems.append(f"multiplicity < 1 at entries {(bad[:3] + s).tolist()}")
                break
            previous, total = int(i[-1]), total + int(m.sum())
        else:
            if "realised" in plan.meta and total != int(plan.meta["realised"]):
                problems.append(f"multiplicities sum to {total}, plan.json says realised {plan.meta['realised']}")
    if problems:
        raise InvalidPlanError(f"plan {where} is not a valid plan: " + "; ".join(problems))


def _plain(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-serialisable: {type(x)}")
