"""Every consumer checks the lineage it joins: one pool, one truth.

A committed version records the upstream versions it was computed from (``_version.json``
``refs``, see ``io.versions``). The *pool version* (a clusters version) pins the manifest and the
embeddings it was clustered from; the embeddings version pins the manifest it embedded. A step
that joins two artefacts — clusters (manifest + embeddings), training and exports (plan + pool +
manifest), evaluation (checkpoint + pool) — must refuse inputs that were never made from each
other. Dagster does not prevent it: "Materialize selected" on one asset reads whatever its
upstreams last committed, and row-count checks cannot see that 383 rows name other samples.

``require_made_from(child, parent, ref=...)`` compares what ``child`` records under ``ref`` with
the version ``parent`` is; ``pool_pins(pool)`` gives what a pool version pins;
``require_pool_inputs(pool, manifest=..., embeddings=...)`` refuses any input that differs from
those pins. A mismatch raises ``LineageError`` naming both artefacts, both versions and what to
materialise. Plain directories (test fixtures, a user's folder) record nothing and pass: there is
no recorded ancestry to contradict.
"""
from __future__ import annotations

import os
from pathlib import Path
from dynamics_assets.core.io import versions

# The asset that produces each ref name, for the "materialise …" advice.
PRODUCER = {"manifest": "raw_pairs", "embeddings": "pair_embeddings", "pool": "clusters", "plan": "sample_plan",
            "checkpoint": "checkpoint"}
# What to re-materialise, in lineage order, once ``name`` has moved on.
DOWNSTREAM = {"manifest": "reference_model → pair_embeddings → clusters",
              "embeddings": "clusters", "pool": "sample_plan (and what reads it)"}


class LineageError(ValueError):
    """Two artefacts joined by a step were not made from each other."""


def _committed(path: str | os.PathLike | None) -> Path | None:
    """The committed version ``path`` names (a root resolves to its CURRENT), else None."""
    if path is None:
        return None
    try:
        p = versions.resolve(path)
    except FileNotFoundError:
        return None
    return p if versions.is_version_dir(p) else None


def recorded_ref(version_dir: str | os.PathLike, name: str) -> Path | None:
    """The version directory ``version_dir`` records under ref ``name`` (None: no such ref)."""
    d = _committed(version_dir)
    if d is None:
        return None
    ref = versions.version_info(d).get("refs", {}).get(name)
    return None if ref is None else (d / ref["path"]).resolve()


def recorded_ref_id(version_dir: str | os.PathLike, name: str) -> str | None:
    d = _committed(version_dir)
    if d is None:
        return None
    ref = versions.version_info(d).get("refs", {}).get(name)
    return None if ref is None else str(ref["id"])


def _describe(path: Path) -> str:
    """'<artefact> version <id>' for a committed version."""
    try:
        artefact = versions.version_info(path).get("artefact") or path.parent.parent.name
    except (OSError, ValueError):
        artefact = path.parent.parent.name
    return f"{artefact} version {path.name}"


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def require_made_from(child: str | os.PathLike | None, parent: str | os.PathLike | None, *, ref: str,
                      what: str) -> None:
    """Refuse ``child`` unless it was made from ``parent``: when both are committed versions and
    ``child`` records a ``ref`` version, that version must be ``parent``. ``what``: the step that
    joins them (for the message)."""
    c, p = _committed(child), _committed(parent)
    if c is None or p is None or _inside(c, p):
        return
    rid = recorded_ref_id(c, ref)
    if rid is not None and rid != p.name:
        producer = PRODUCER.get(ref, ref)
        raise LineageError(
            f"{what}: {_describe(c)} was made from {producer} version {rid}, but this step reads "
            f"{_describe(p)} — the two were never made from each other (a partial materialisation?). "
            f"Materialise {DOWNSTREAM.get(ref, 'the assets downstream of ' + producer)} from {producer} "
            f"version {p.name} first, or select the whole lineage from {producer}.")


def pool_pins(pool: str | os.PathLike | None) -> dict[str, str]:
    """The versions a pool (clusters) version pins: ref name -> version id (empty for a bare id)."""
    d = _committed(pool)
    if d is None:
        return {}
    return {name: str(ref["id"]) for name, ref in versions.version_info(d).get("refs", {}).items()}


def pool_of_plan(plan_dir: str | os.PathLike) -> Path | None:
    """The pool version directory a committed plan pins (its ``pool`` ref), if any."""
    return recorded_ref(plan_dir, "pool")


def require_pool_inputs(pool: str | os.PathLike | None, what: str, **inputs: str | os.PathLike | None) -> None:
    """Refuse any input (``manifest=…``, ``embeddings=…``) that is a committed version other than
    the one the pool version pins under that name."""
    p = _committed(pool)
    if p is None:
        return
    for name, path in inputs.items():
        d = _committed(path)
        if d is None or _inside(d, p):
            continue
        rid = recorded_ref_id(p, name)
        if rid is not None and rid != d.name:
            producer = PRODUCER.get(name, name)
            raise LineageError(
                f"{what}: pool version {p.name} ({_describe(p)}) was built from {producer} version {rid}, but this "
                f"step was given {_describe(d)}. Use the {producer} version the pool pins, or re-curate: "
                f"materialise {DOWNSTREAM.get(name, 'clusters')} from {producer} version {d.name}, then redraw the plans.")


def resolve_pool(pool_version: str | os.PathLike, plan_dir: str | os.PathLike | None = None) -> Path | None:
    """The pool version directory: ``pool_version`` itself when it is a directory or root, else the
    pool the plan pins (a bare id is checked against the plan's ``pool_version`` elsewhere)."""
    d = _committed(pool_version) if Path(pool_version).exists() else None
    if d is None and plan_dir is not None:
        d = pool_of_plan(plan_dir)
    return d


def check_plan_inputs(plan_dir: str | os.PathLike, pool_version: str | os.PathLike, what: str,
                      manifest: str | os.PathLike | None = None) -> None:
    """Everything a step that reads a plan must check: the plan was drawn on ``pool_version``
    (``versions.StalePlanError`` otherwise) and the manifest is the one that pool pins."""
    versions.require_same_pool(plan_dir, pool_version, what=what)
    pool = resolve_pool(pool_version, plan_dir)
    if pool is not None and manifest is not None:
        require_pool_inputs(pool, what, manifest=manifest)



def check_evaluation_inputs(checkpoint: str | os.PathLike, pool: str | os.PathLike, what: str = "evaluation",
                            manifest: str | os.PathLike | None = None) -> None:
    """An evaluation reads a checkpoint, a pool version and a manifest: the checkpoint must have been
    trained on a plan drawn on that pool (its ``plan`` ref's ``pool`` ref), and the manifest must be
    the one the pool pins."""
    ck = Path(checkpoint)
    ck_dir = ck.parent if ck.is_file() else ck
    pool_dir = _committed(pool)
    plan = recorded_ref(ck_dir, "plan")
    trained_on = recorded_ref_id(plan, "pool") if plan is not None else None
    if pool_dir is not None and trained_on is not None and trained_on != pool_dir.name:
        raise versions.StalePlanError(
            f"{what}: {_describe(_committed(ck_dir))} was trained on a plan of pool version {trained_on}; this step "
            f"reads pool version {pool_dir.name} (its clusters are not the ones the plan was drawn from): "
            f"redraw the plan (sample_plan) and retrain the epoch (checkpoint)")
    require_pool_inputs(pool_dir, what, manifest=manifest)
