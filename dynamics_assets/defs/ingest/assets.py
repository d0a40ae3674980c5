"""Stage 1 — ingest: locate (or generate) the webdataset shards, and manifest every pair."""

from pathlib import Path
from typing import Optional

import dagster as dg

from dynamics_assets.core.records import PoolManifest, RawShards
from dynamics_assets.defs.metadata import md_table
from dynamics_assets.defs.resources import GpuResource, StorageResource

GROUP = "ingest"


class RawShardsConfig(dg.Config):
    """``source``: "synthetic" (the embedded default pool, generated deterministically), a folder
    of webdataset ``.tar`` shards (img2dataset layout): a path, a ``file://`` URI, or an fsspec URI
    (``s3://``, ``gs://``, ``memory://``, …; staged into ``data/raw/remote/`` file by file); or a
    pool that ships its embeddings: ``datacomp:/path`` (CommonPool metadata parquet + npz) or
    ``laion:/path`` (clip-retrieval img_emb / text_emb / metadata), also detected in a bare path. ``eval``: a labelled evaluation set (an ImageFolder or a clip_benchmark webdataset
    folder); empty for a user's pool: evaluation by retrieval only."""

    source: str = "synthetic"
    eval: Optional[str] = None
    embedding: str = "b32"  # a DataComp pool's embeddings: b32 (ViT-B/32, 512-d) or l14 (ViT-L/14, 768-d)
    images: Optional[str] = None  # a pool of embeddings: a folder of its webdataset shards, joined by uid (reported)
    pairs: int = 20_000
    seed: int = 0
    samples_per_shard: int = 2_000
    eval_per_concept: int = 10
    profile: str = "concept"  # the synthetic pool's profile: "concept" or "web" (near-duplicate bursts)
    burst_share: Optional[float] = None  # web profile overrides (empty: synthetic.WebProfile's defaults)
    burst_exponent: Optional[float] = None
    frequency_exponent: Optional[float] = None
    # a curated set (shards the user trusts: the curated model / DFN trains on it), or "synthetic" with
    # the synthetic source: the generator's clean set (curated_per_concept pairs of every concept)
    curated: Optional[str] = None
    curated_per_concept: int = 4
    target: Optional[str] = None  # a target set: images (-> image_filter's target embeddings) and/or classnames.txt


def _curated_and_target(config: RawShardsConfig, raw_root: Path, eval_dir: Optional[str], log) -> dict:
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
        raise dg.Failure(f"raw_shards: {e}") from None
    return out


@dg.asset(group_name=GROUP, kinds={"webdataset"})
def raw_shards(context: dg.AssetExecutionContext, config: RawShardsConfig, storage: StorageResource) -> RawShards:
    """The webdataset tar shards of the training pool (and, for the synthetic pool, its
    held-out evaluation set)."""
    if config.eval:  # checked before any work (layout, classes, image headers), as the main command does
        from dynamics_assets.core.evaluate.eval_set import validate_eval_set
        context.log.info(f"eval set: {validate_eval_set(config.eval).describe()}")
    layout = storage.layout
    if config.source == "synthetic":
        from dataclasses import replace

        from dynamics_assets.core.ingest.synthetic import WebProfile, generate

        overrides = {name: getattr(config, name) for name in ("burst_share", "burst_exponent", "frequency_exponent")
                     if getattr(config, name) is not None}
        try:
            web = replace(WebProfile(), **overrides)
            ds = generate(layout.root / "raw", pairs=config.pairs, seed=config.seed,
                          samples_per_shard=config.samples_per_shard, eval_per_concept=config.eval_per_concept,
                          profile=config.profile, web=web)
        except ValueError as e:
            raise dg.Failure(f"raw_shards synthetic pool: {e}") from e
        shards_dir = ds.out_dir / "shards"
        extra = {"eval_dir": str(ds.eval_dir), "eval_kind": "synthetic", "ground_truth": str(ds.ground_truth_path),
                 "dirt_counts": dict(ds.dirt_counts),
                 **_curated_and_target(config, layout.root / "raw", str(ds.eval_dir), context.log)}
    elif (precomputed := _precomputed(config.source)) is not None:
        context.add_output_metadata({"layout": precomputed.layout, "parts": len(precomputed.parts),
                                     "folder": dg.MetadataValue.path(str(precomputed.root))})
        return RawShards(source=_shown(config.source), shards_dir=str(precomputed.root),
                         shards=tuple(p.name for p in precomputed.parts), eval_dir=config.eval,
                         eval_kind="labelled" if config.eval else None,
                         layout=precomputed.layout, embedding=config.embedding, images_dir=config.images,
                         **_curated_and_target(config, layout.root / "raw", config.eval, context.log))
    else:
        from dynamics_assets.core.ingest.sources import redact, resolve_source, scrub

        try:
            shards_dir = resolve_source(config.source, layout.root / "raw" / "remote")
        except (FileNotFoundError, OSError, ValueError) as e:  # the URI may carry credentials: never echoed
            raise dg.Failure(f"raw_shards source {redact(config.source)!r}: {scrub(str(e), config.source)}") from None
        extra = {"eval_dir": config.eval, "eval_kind": "labelled"} if config.eval else {}
        extra.update(_curated_and_target(config, layout.root / "raw", config.eval, context.log))
    shards = tuple(sorted(p.name for p in shards_dir.glob("*.tar")))
    if not shards:
        raise dg.Failure(f"no .tar shards in {shards_dir}")
    record = RawShards(source=_shown(config.source), shards_dir=str(shards_dir), shards=shards, **extra)
    context.add_output_metadata({
        "shards_dir": dg.MetadataValue.path(str(shards_dir)),
        "num_shards": len(shards),
        "bytes": sum((shards_dir / s).stat().st_size for s in shards),
        **({"planted_dirt": dg.MetadataValue.json(dict(record.dirt_counts))} if record.dirt_counts else {}),
        **({"curated_dir": dg.MetadataValue.path(record.curated_dir)} if record.curated_dir else {}),
        **({"target_dir": dg.MetadataValue.path(record.target_dir)} if record.target_dir else {}),
    })
    return record


def _shown(source: str) -> str:
    """The source as it may be recorded (the record is pickled into the instance's storage) and
    shown: a URI's credentials, query string and fragment removed."""
    from dynamics_assets.core.ingest.sources import redact

    return redact(source)


def _precomputed(source: str):
    """The layout of a pool that ships embeddings (``datacomp:``/``laion:`` or detected), else None."""
    from dynamics_assets.core.ingest.precomputed import detect_layout, parse_source

    kind, path = parse_source(source)
    if kind == "auto" and ("://" in source or not path.is_dir()):
        return None
    try:
        return detect_layout(source, kind)
    except ValueError as e:
        if kind != "auto":
            raise dg.Failure(f"raw_shards source {_shown(source)!r}: {e}") from e
        return None


class RawPairsConfig(dg.Config):
    """``decode``: "full" decodes every image (a truncated or corrupt image is quarantined here);
    "header" reads only each image's header (format, size, pixel count; the pixel cap applies),
    several times faster (bench/bench_manifest.py), and leaves data that is corrupt after a valid
    header to the embedding step, which records it and has it quarantined as corrupt_image."""

    decode: str = "full"


@dg.asset(group_name=GROUP, kinds={"parquet", "duckdb"})
def raw_pairs(context: dg.AssetExecutionContext, config: RawPairsConfig, raw_shards: RawShards,
              storage: StorageResource, gpu: GpuResource) -> PoolManifest:
    """Parquet manifest of every pair: stable sample id (uid, else content hash), members,
    caption, image size, status; bad pairs quarantined with a reason, exact duplicates found
    across shards with DuckDB. ok + quarantined = every pair read. Shards are read one task each
    on the configured engine (``gpu.compute``: local or Ray)."""
    from dynamics_assets.core.ingest.manifest import build_manifest, manifest_files
    from dynamics_assets.core.ingest.sources import img2dataset_stats, stats_mismatches
    from dynamics_assets.core.io.versions import Artefact

    if raw_shards.layout != "webdataset":
        return _ingest_precomputed(context, raw_shards, storage)

    shards_dir = Path(raw_shards.shards_dir)
    root = storage.layout.artifact("raw_pairs")
    # The pool follows its source: shards of the previous version that the source no longer has
    # leave the pool (recorded in the metadata), instead of lingering until training misses them.
    current = Artefact(root).current()
    gone = sorted({name for name, _ in manifest_files(current)} - set(raw_shards.shards)) if current else []
    if config.decode not in ("full", "header"):
        raise dg.Failure(f"raw_pairs.decode must be 'full' or 'header', got {config.decode!r}")
    with gpu.compute.engine_for(context.log) as engine:
        summary = build_manifest([shards_dir / s for s in raw_shards.shards], root, drop=gone,
                                 decode=config.decode, engine=engine)
    out = summary.version_dir
    stats = img2dataset_stats(shards_dir)
    mismatches = stats_mismatches(stats, {c.shard: c.rows for c in summary.per_shard}, raw_shards.shards)
    for m in mismatches:
        context.log.warning(f"{m.shard}: {m.note}")
    context.log.info(f"manifest: {summary.ok} ok, {summary.quarantined} quarantined "
                     f"({summary.by_reason}); read {len(summary.read_shards)} shard(s), "
                     f"reused {len(summary.reused_shards)}, dropped {len(summary.dropped_shards)} gone from the source")
    context.add_output_metadata({
        "pairs": summary.total, "ok": summary.ok, "quarantined": summary.quarantined,
        "quarantine_reasons": md_table(["reason", "pairs"], sorted(summary.by_reason.items())),
        "empty_shards": len(summary.empty_shards),
        "shards_gone_from_source": dg.MetadataValue.json(list(summary.dropped_shards)),
        "img2dataset_stats": ("no _stats.json files" if not stats else
                              f"{len(stats)} stats files, {len(mismatches)} shard(s) disagree"),
        **({"img2dataset_mismatches": md_table(["shard", "img2dataset successes", "manifest rows", "note"],
                                               [(m.shard, m.stated, m.read, m.note) for m in mismatches])}
           if mismatches else {}),
        "manifest_version": str(summary.version_id),
        "decode": config.decode, "engine": gpu.compute.engine,
        "manifest_dir": dg.MetadataValue.path(str(out)),
        "dagster/row_count": summary.total,
    })
    return PoolManifest(manifest_dir=str(out), shards_dir=str(shards_dir), n_ok=summary.ok,
                        n_total=summary.total, by_reason=dict(summary.by_reason), eval_dir=raw_shards.eval_dir,
                        eval_kind=raw_shards.eval_kind, curated_dir=raw_shards.curated_dir,
                        target_dir=raw_shards.target_dir, ground_truth=raw_shards.ground_truth)


def _ingest_precomputed(context: dg.AssetExecutionContext, raw_shards: RawShards,
                        storage: StorageResource) -> PoolManifest:
    """A pool that ships its embeddings: manifest and embeddings committed in one streamed pass
    (part by part); the pairs have no images, so nothing is encoded or trained downstream."""
    from dynamics_assets.core.ingest.precomputed import ingest_precomputed
    from dynamics_assets.core.model.spec import EncoderSpec

    s = ingest_precomputed(f"{raw_shards.layout}:{raw_shards.shards_dir}", storage.layout.artifact("raw_pairs"),
                           storage.layout.artifact("pair_embeddings"), embedding=raw_shards.embedding or "b32")
    joined = {}
    if raw_shards.images_dir:  # which uids the given shards have images for (reported; not trained on)
        from dynamics_assets.core.ingest.precomputed import join_images

        j = join_images(s.manifest_dir, sorted(Path(raw_shards.images_dir).glob("*.tar")))
        if j.without_image:
            context.log.warning(f"{j.without_image} of {j.pool_ok} uids have no image in {raw_shards.images_dir}")
        joined = {"uids_with_image": j.with_image, "uids_without_image": j.without_image,
                  "uids_without_image_sample": dg.MetadataValue.json(list(j.missing_sample)),
                  "shard_samples_not_in_pool": j.not_in_pool}
    context.add_output_metadata({
        **joined,
        "pairs": s.total, "ok": s.ok, "quarantined": s.quarantined,
        "quarantine_reasons": md_table(["reason", "pairs"], sorted(s.by_reason.items())),
        "layout": s.layout, "embedding": str(s.embedding), "dim": s.dim, "parts": len(s.parts),
        "images": False, "manifest_dir": dg.MetadataValue.path(str(s.manifest_dir)),
        "manifest_version": s.manifest_version, "embeddings_version": s.embeddings_version,
        "dagster/row_count": s.total,
    })
    return PoolManifest(manifest_dir=str(s.manifest_dir), shards_dir=raw_shards.shards_dir, n_ok=s.ok,
                        n_total=s.total, by_reason=dict(s.by_reason), eval_dir=raw_shards.eval_dir,
                        eval_kind=raw_shards.eval_kind,
                        has_images=False, embeddings_dir=str(s.embeddings_dir), curated_dir=raw_shards.curated_dir,
                        target_dir=raw_shards.target_dir,
                        encoder=EncoderSpec(s.encoder["model_name"], None, precision="fp16"))
