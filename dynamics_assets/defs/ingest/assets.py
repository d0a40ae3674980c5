"""Stage 1 — ingest: locate (or generate) the webdataset shards, and manifest every pair."""

from pathlib import Path
from typing import Optional

import dagster as dg

from dynamics_assets.core.records import PoolManifest, RawShards
from dynamics_assets.defs.metadata import md_table
from dynamics_assets.defs.resources import ComputeResource, StorageResource

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


def _metadata(facts: dict) -> dict:
    """A core step's facts as Dagster metadata: a ``Path`` is a path, a ``dict`` or ``list`` JSON."""
    return {k: dg.MetadataValue.path(str(v)) if isinstance(v, Path) else
            dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v for k, v in facts.items()}


@dg.asset(group_name=GROUP, kinds={"webdataset"})
def raw_shards(context: dg.AssetExecutionContext, config: RawShardsConfig, storage: StorageResource) -> RawShards:
    """The webdataset tar shards of the training pool (and, for the synthetic pool, its
    held-out evaluation set)."""
    from dynamics_assets.core.ingest.locate import SourceError, locate_shards

    if config.eval:  # checked before any work (layout, classes, image headers), as the main command does
        from dynamics_assets.core.evaluate.eval_set import validate_eval_set
        context.log.info(f"eval set: {validate_eval_set(config.eval).describe()}")
    try:
        record, facts = locate_shards(config, storage.layout.root / "raw", context.log)
    except SourceError as e:
        raise dg.Failure(str(e)) from e
    context.add_output_metadata(_metadata(facts))
    return record


class RawPairsConfig(dg.Config):
    """``decode``: "full" decodes every image (a truncated or corrupt image is quarantined here);
    "header" reads only each image's header (format, size, pixel count; the pixel cap applies),
    several times faster (bench/bench_manifest.py), and leaves data that is corrupt after a valid
    header to the embedding step, which records it and has it quarantined as corrupt_image."""

    decode: str = "full"


@dg.asset(group_name=GROUP, kinds={"parquet", "duckdb"})
def raw_pairs(context: dg.AssetExecutionContext, config: RawPairsConfig, raw_shards: RawShards,
              storage: StorageResource, compute: ComputeResource) -> PoolManifest:
    """Parquet manifest of every pair: stable sample id (uid, else content hash), members,
    caption, image size, status; bad pairs quarantined with a reason, exact duplicates found
    across shards with DuckDB. ok + quarantined = every pair read. Shards are read one task each
    on the configured engine (the ``compute`` resource: local or Ray)."""
    from dynamics_assets.core.ingest.pairs import DecodeError, ingest_precomputed_pool, manifest_shards

    if raw_shards.layout != "webdataset":  # a pool that ships its embeddings: manifested with them, no images
        record, facts = ingest_precomputed_pool(raw_shards, storage.layout.artifact("raw_pairs"),
                                                storage.layout.artifact("pair_embeddings"), context.log)
    else:
        try:
            record, facts = manifest_shards(raw_shards, storage.layout.artifact("raw_pairs"), decode=config.decode,
                                            engine=lambda: compute.engine_for(context.log),
                                            engine_name=compute.engine, log=context.log)
        except DecodeError as e:
            raise dg.Failure(str(e)) from None
        if "img2dataset_mismatches" in facts:
            facts["img2dataset_mismatches"] = md_table(["shard", "img2dataset successes", "manifest rows", "note"],
                                                       facts["img2dataset_mismatches"])
    facts["quarantine_reasons"] = md_table(["reason", "pairs"], facts["quarantine_reasons"])
    context.add_output_metadata(_metadata(facts))
    return record

