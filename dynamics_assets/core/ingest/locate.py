"""Locating the pool's raw data (the ``raw_shards`` step's core).

``locate_shards`` reads the raw_shards settings (``defs/ingest/assets.py: RawShardsConfig``):
the synthetic pool is generated, a pool of embeddings (``datacomp:``/``laion:`` or detected) is
recognised by its layout, anything else is a folder or URI of webdataset shards (staged when
remote); the curated and target sets are checked on the way. A source is recorded and shown
without credentials (``sources.redact``); an error names it the same way (``SourceError``).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from dynamics_assets.core.records import RawShards


class SourceError(ValueError):
    """raw_shards' settings name something unusable; the message is safe to show."""


def shown(source: str) -> str:
    """The source as it may be recorded (the record is pickled into the instance's storage) and
    shown: a URI's credentials, query string and fragment removed."""
    from dynamics_assets.core.ingest.sources import redact

    return redact(source)


def curated_and_target(config: Any, raw_root: Path, eval_dir: Optional[str], log) -> dict:
    """raw_shards' curated and target sets, checked: the curated set must not overlap the eval set
    (by uid and by image SHA-256), the target set must hold images or class names."""
    from dynamics_assets.core.ingest.curated import CuratedSetError, check_curated, check_no_overlap, check_target

    out = {}
    try:
        if config.curated:
            if config.curated == "synthetic":
                if config.source != "synthetic":
                    raise CuratedSetError("curated: 'synthetic' names the generator's clean set, which only the "
                                          "synthetic pool has; give a folder of webdataset shards")
                from dynamics_assets.core.ingest.synthetic import generate_curated

                try:
                    folder = generate_curated(raw_root, seed=config.seed, per_concept=config.curated_per_concept,
                                              samples_per_shard=config.samples_per_shard)
                except ValueError as e:
                    raise CuratedSetError(f"curated_per_concept: {e}") from None
            else:
                folder = Path(config.curated)
            curated = check_curated(folder)
            if eval_dir:
                o = check_no_overlap(curated, eval_dir)
                log.info(f"curated set {curated.root}: {o.curated_pairs} pairs, none shared with the "
                         f"{o.eval_samples} eval samples (by uid or image SHA-256)")
            out["curated_dir"] = str(curated.root)
        if config.target:
            target = check_target(config.target)
            log.info(f"target set: {target.describe()}")
            out["target_dir"] = str(target.root)
    except CuratedSetError as e:
        raise SourceError(f"raw_shards: {e}") from None
    return out


def precomputed_layout(source: str):
    """The layout of a pool that ships embeddings (``datacomp:``/``laion:`` or detected), else None."""
    from dynamics_assets.core.ingest.precomputed import detect_layout, parse_source

    kind, path = parse_source(source)
    if kind == "auto" and ("://" in source or not path.is_dir()):
        return None
    try:
        return detect_layout(source, kind)
    except ValueError as e:
        if kind != "auto":
            raise SourceError(f"raw_shards source {shown(source)!r}: {e}") from e
        return None


def _synthetic(config: Any, raw_root: Path, log) -> tuple[Path, dict]:
    from dynamics_assets.core.ingest.synthetic import WebProfile, generate

    overrides = {name: getattr(config, name) for name in ("burst_share", "burst_exponent", "frequency_exponent")
                 if getattr(config, name) is not None}
    try:
        web = replace(WebProfile(), **overrides)
        ds = generate(raw_root, pairs=config.pairs, seed=config.seed, samples_per_shard=config.samples_per_shard,
                      eval_per_concept=config.eval_per_concept, profile=config.profile, web=web)
    except ValueError as e:
        raise SourceError(f"raw_shards synthetic pool: {e}") from e
    return ds.out_dir / "shards", {"eval_dir": str(ds.eval_dir), "eval_kind": "synthetic",
                                   "ground_truth": str(ds.ground_truth_path), "dirt_counts": dict(ds.dirt_counts),
                                   **curated_and_target(config, raw_root, str(ds.eval_dir), log)}


def locate_shards(config: Any, raw_root: Path, log) -> tuple[RawShards, dict[str, Any]]:
    """(record, facts): the pool's raw data under ``raw_root`` and what to show of it (a ``Path``: a
    path; a ``dict``: JSON). Refused with a ``SourceError`` naming the problem."""
    if config.source == "synthetic":
        shards_dir, extra = _synthetic(config, raw_root, log)
    elif (precomputed := precomputed_layout(config.source)) is not None:
        facts = {"layout": precomputed.layout, "parts": len(precomputed.parts), "folder": Path(precomputed.root)}
        return RawShards(source=shown(config.source), shards_dir=str(precomputed.root),
                         shards=tuple(p.name for p in precomputed.parts), eval_dir=config.eval,
                         eval_kind="labelled" if config.eval else None,
                         layout=precomputed.layout, embedding=config.embedding, images_dir=config.images,
                         **curated_and_target(config, raw_root, config.eval, log)), facts
    else:
        from dynamics_assets.core.ingest.sources import redact, resolve_source, scrub

        try:
            shards_dir = resolve_source(config.source, raw_root / "remote")
        except (FileNotFoundError, OSError, ValueError) as e:  # the URI may carry credentials: never echoed
            raise SourceError(f"raw_shards source {redact(config.source)!r}: {scrub(str(e), config.source)}") from None
        extra = {"eval_dir": config.eval, "eval_kind": "labelled"} if config.eval else {}
        extra.update(curated_and_target(config, raw_root, config.eval, log))
    shards = tuple(sorted(p.name for p in shards_dir.glob("*.tar")))
    if not shards:
        raise SourceError(f"no .tar shards in {shards_dir}")
    record = RawShards(source=shown(config.source), shards_dir=str(shards_dir), shards=shards, **extra)
    return record, {
        "shards_dir": Path(shards_dir), "num_shards": len(shards),
        "bytes": sum((shards_dir / s).stat().st_size for s in shards),
        **({"planted_dirt": dict(record.dirt_counts)} if record.dirt_counts else {}),
        **({"curated_dir": Path(record.curated_dir)} if record.curated_dir else {}),
        **({"target_dir": Path(record.target_dir)} if record.target_dir else {}),
    }

