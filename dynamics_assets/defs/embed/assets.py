"""Stage 2 — embed: a small open_clip reference model trained on the raw pairs, the L2-normalised
image and text embeddings of every valid pair (written per shard, resumable), and the embeddings
of each shard that lands later (one dynamic partition per shard)."""

import math
from pathlib import Path
from typing import Optional

import dagster as dg

from dynamics_assets.core.model.spec import EncoderSpec
from dynamics_assets.core.records import PoolEmbeddings, PoolManifest, ReferenceModel, ShardIngest
from dynamics_assets.defs.metadata import md_table
from dynamics_assets.defs.partitions import raw_shard_partitions
from dynamics_assets.defs.resources import GpuResource, StorageResource

GROUP = "embeddings"


class ReferenceModelConfig(dg.Config):
    """``retrain``: train even when the checkpoint was trained on this same pool with these
    settings (by default it is reused, so re-curating an unchanged pool keeps its encoder)."""

    model_name: str = "dynamics-tiny-32"
    epochs: Optional[int] = None  # empty: enough for ≥ 140 steps, at least 2 (train.settings.reference_epochs_for)
    batch_size: Optional[int] = None  # empty: a power of two ≤ N/32 in [16, 256] (train.settings.batch_for)
    seed: int = 0
    retrain: bool = False


@dg.asset(group_name=GROUP, kinds={"pytorch"}, pool="gpu")
def reference_model(context: dg.AssetExecutionContext, config: ReferenceModelConfig, raw_pairs: PoolManifest,
                    storage: StorageResource, gpu: GpuResource) -> ReferenceModel:
    """A small open_clip model trained on all valid raw pairs: the offline default encoder (no
    pretrained weights can be downloaded here) and the reference model of the baselines.
    Its checkpoint loads with ``open_clip.create_model_and_transforms(model_name, pretrained=path)``."""
    from dynamics_assets.core.io.versions import Artefact
    from dynamics_assets.core.train.loop import train_reference_model
    from dynamics_assets.core.train.settings import batch_for, near_chance, reference_epochs_for

    if not raw_pairs.has_images:
        context.add_output_metadata({"skipped": "the pool ships its embeddings and has no images to train on"})
        return ReferenceModel(checkpoint=None, model_name=config.model_name, steps=0, final_loss=float("nan"),
                              reused=False)

    batch = config.batch_size or batch_for(raw_pairs.n_ok)
    epochs = config.epochs or reference_epochs_for(raw_pairs.n_ok, batch)

    # A new version of the artefact, starting from links to the current one (so an unchanged pool
    # and settings reuse the checkpoint); a crash keeps the staging directory and its step
    # checkpoints, and the next run resumes from them.
    artefact = Artefact(storage.layout.artifact("reference_model"))
    with artefact.write(base=artefact.current(), resume=True, keep_on_error=True,
                        refs={"manifest": raw_pairs.manifest_dir}) as staging:
        metrics = train_reference_model(
            raw_pairs.manifest_dir, raw_pairs.shards_dir, staging / f"{config.model_name}.pt",
            model_name=config.model_name, epochs=epochs, batch_size=batch, seed=config.seed,
            device=gpu.resolved_device(), reuse=not config.retrain)
    out = staging.version_dir / f"{config.model_name}.pt"
    warnings = []
    if near_chance(float(metrics["final_loss"]), batch):
        warnings.append(f"the reference model ended at loss {float(metrics['final_loss']):.3f}, within 10% of chance "
                        f"(ln {batch} = {math.log(batch):.3f}): it learnt nothing, and the embeddings "
                        "and clusters made with it will not follow the content; train longer or configure a "
                        "pretrained encoder for pair_embeddings")
    for w in warnings:
        context.log.warning(w)
    context.add_output_metadata({
        "checkpoint": dg.MetadataValue.path(str(out)), "model_name": config.model_name,
        "epochs": epochs, "batch_size": batch,
        "warnings": dg.MetadataValue.md("\n".join(f"- ⚠ {w}" for w in warnings) or "none"),
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
    })
    return ReferenceModel(checkpoint=str(out), model_name=config.model_name, steps=int(metrics["steps"]),
                          final_loss=float(metrics["final_loss"]), reused=bool(metrics["reused"]))


class EmbeddingConfig(dg.Config):
    """Leave ``model_name`` empty to embed with the reference model; or name any open_clip model
    with a pretrained tag or a local checkpoint path in ``pretrained``."""

    model_name: Optional[str] = None
    pretrained: Optional[str] = None
    batch_size: int = 256


@dg.asset(group_name=GROUP, kinds={"pytorch", "numpy"}, pool="gpu")
def pair_embeddings(context: dg.AssetExecutionContext, config: EmbeddingConfig, raw_pairs: PoolManifest,
                    reference_model: ReferenceModel, storage: StorageResource, gpu: GpuResource) -> PoolEmbeddings:
    """Image and text embeddings (float16, unit norm) of every valid pair, one directory per
    shard with the sample ids; a crash resumes at the first shard not yet written."""
    from dynamics_assets.core.embed.encode import embed_shards

    if raw_pairs.embeddings_dir is not None:  # the pool shipped its embeddings: committed with the manifest
        from dynamics_assets.core.embed.store import EmbeddingStore

        store = EmbeddingStore(raw_pairs.embeddings_dir)
        context.add_output_metadata({"embeddings_dir": dg.MetadataValue.path(raw_pairs.embeddings_dir),
                                     "encoder": raw_pairs.encoder.model_name, "dim": store.dim,
                                     "source": "precomputed (shipped with the pool)", "dagster/row_count": len(store)})
        return PoolEmbeddings(embeddings_dir=raw_pairs.embeddings_dir, encoder=raw_pairs.encoder, n=len(store),
                              dim=store.dim)
    if reference_model.checkpoint is None and not config.model_name:
        raise dg.Failure("no encoder: the reference model was not trained and no pair_embeddings.model_name is set")
    if config.model_name:
        spec = EncoderSpec(config.model_name, config.pretrained, precision=gpu.resolved_precision())
    else:
        spec = EncoderSpec(reference_model.model_name, reference_model.checkpoint, precision=gpu.resolved_precision())
    with gpu.compute.engine_for(context.log) as engine:
        summary = embed_shards(spec, raw_pairs.manifest_dir, raw_pairs.shards_dir,
                               storage.layout.artifact("pair_embeddings"), batch_size=config.batch_size,
                               device=gpu.resolved_device(), num_workers=gpu.num_workers, engine=engine)
    out = summary.version_dir
    context.add_output_metadata({
        "embeddings_dir": dg.MetadataValue.path(str(out)), "encoder": spec.model_name,
        "dim": summary.dim, "shards_embedded": summary.shards_embedded,
        "shards_skipped (already done)": summary.shards_skipped, "pairs_embedded": summary.pairs_embedded,
        "invalid_rows": summary.invalid_rows, "seconds": round(summary.seconds, 2),
        "engine": gpu.compute.engine, "num_workers": gpu.num_workers,
        "embeddings_version": str(summary.version_id), "resumed": bool(summary.resumed),
        "dagster/row_count": raw_pairs.n_ok,
    })
    return PoolEmbeddings(embeddings_dir=str(out), encoder=spec, n=raw_pairs.n_ok, dim=summary.dim)


@dg.asset(group_name=GROUP, partitions_def=raw_shard_partitions, kinds={"pytorch", "numpy"}, pool="gpu")
def shard_embeddings(context: dg.AssetExecutionContext, raw_pairs: PoolManifest, pair_embeddings: PoolEmbeddings,
                     storage: StorageResource, gpu: GpuResource) -> ShardIngest:
    """One shard that landed in the pool's folder after curation: checked to be a complete tar,
    manifested into the pool (quarantine and cross-shard duplicates included) and embedded alone,
    with the encoder that embedded the pool. No other shard is re-embedded; the re-curation that
    follows refreshes clusters, statistics and the coming epochs' plans."""
    from dynamics_assets.core.embed.encode import embed_shards
    from dynamics_assets.core.ingest.landing import tar_problem
    from dynamics_assets.core.ingest.manifest import build_manifest

    shard = context.partition_key
    shards_dir = Path(raw_pairs.shards_dir)
    path = shards_dir / shard
    if not path.is_file():
        raise dg.Failure(f"shard {shard} is registered but {path} does not exist")
    if (problem := tar_problem(path)) is not None:
        raise dg.Failure(f"shard {path} is not a complete tar: {problem}")
    manifest = build_manifest([path], storage.layout.artifact("raw_pairs"))
    counts = next(c for c in manifest.per_shard if c.shard == shard)
    summary = embed_shards(pair_embeddings.encoder, manifest.version_dir, shards_dir,
                           storage.layout.artifact("pair_embeddings"), shards=[shard], device=gpu.resolved_device(),
                           num_workers=gpu.num_workers)
    touched = sorted(set(manifest.rewritten_shards) - {shard})
    context.add_output_metadata({
        "shard": shard, "pairs": counts.rows, "ok": counts.ok, "quarantined": counts.quarantined,
        "quarantine_reasons": md_table(["reason", "pairs"], sorted(counts.by_reason.items())),
        "pairs_embedded": summary.pairs_embedded, "already_embedded": summary.shards_skipped > 0,
        "encoder": pair_embeddings.encoder.model_name, "seconds": round(summary.seconds, 2),
        "other_shards_with_new_duplicates": dg.MetadataValue.json(touched),
        "dagster/row_count": counts.rows,
    })
    return ShardIngest(shard=shard, pairs=counts.rows, ok=counts.ok, pairs_embedded=summary.pairs_embedded)
