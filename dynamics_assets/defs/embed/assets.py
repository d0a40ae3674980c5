"""Stage 2 — embed: a small open_clip reference model trained on the raw pairs (or the curated
set), the L2-normalised image and text embeddings of every valid pair (written per shard,
resumable), and the embeddings of each shard that lands later (one dynamic partition per shard)."""

from pathlib import Path
from typing import Literal, Optional

import dagster as dg

from dynamics_assets.core.model.spec import EncoderSpec
from dynamics_assets.core.records import (CuratedModel, CurationTargets, DFNScores, PoolEmbeddings, PoolManifest,
                                         ReferenceModel, ShardIngest)
from dynamics_assets.defs.metadata import md_table
from dynamics_assets.defs.partitions import raw_shard_partitions
from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource

GROUP = "embed"


class ReferenceModelConfig(dg.Config):
    """``retrain``: train even when the checkpoint was trained on this same pool with these
    settings (by default it is reused, so re-curating an unchanged pool keeps its encoder).
    ``train_on``: 'pool' (the raw pairs, the default) or 'curated' (the curated set named by
    ``raw_shards.curated`` / ``--curated``, trained exactly as ``curated_model`` is: the pool's
    embeddings, clusters and CLIP-score scores then come from a model that did not learn from the
    pool it judges). The other hyper-parameters are the training settings' defaults
    (``train.settings.TrainSettings``: lr, weight decay, warm-up, clipping, buffer)."""

    model_name: str = "dynamics-tiny-32"
    epochs: Optional[int] = None  # empty: enough for ≥ 140 steps, at least 2 (train.settings.reference_epochs_for)
    batch_size: Optional[int] = None  # empty: a power of two ≤ N/32 in [16, 256] (train.settings.batch_for)
    seed: int = 0
    retrain: bool = False
    train_on: Literal["pool", "curated"] = "pool"


@dg.asset(group_name=GROUP, kinds={"pytorch"}, pool="gpu")
def reference_model(context: dg.AssetExecutionContext, config: ReferenceModelConfig, raw_pairs: PoolManifest,
                    storage: StorageResource, gpu: GpuResource) -> ReferenceModel:
    """A small open_clip model trained on all valid raw pairs (or, with ``train_on: curated``, on
    the curated set): the offline default encoder (no pretrained weights can be downloaded here) and
    the reference model of the baselines. Its version references the manifest it was trained on;
    its compute (steps, samples seen, FLOPs, seconds) is in this metadata and the record.
    Its checkpoint loads with ``open_clip.create_model_and_transforms(model_name, pretrained=path)``."""
    from dynamics_assets.core.train.reference import learning_warnings, train_on_pool

    if not raw_pairs.has_images:
        context.add_output_metadata({"skipped": "the pool ships its embeddings and has no images to train on"})
        return ReferenceModel(checkpoint=None, model_name=config.model_name, steps=0, final_loss=float("nan"),
                              reused=False, trained_on=config.train_on)
    if config.train_on == "curated":
        if not raw_pairs.curated_dir:
            raise dg.Failure("reference_model: train_on is 'curated' but no curated set is configured "
                             "(raw_shards.curated: a shard folder or 'synthetic'; the main command's --curated DIR)")
        out, m = _train_on_curated_set(context, "reference_model", config, raw_pairs, storage, gpu)
        manifest_dir, md = m["manifest_dir"], _curated_metadata(out, config, raw_pairs, m)
        batch, flops = int(m["batch_size"]), float(m["flops"])
    else:
        r = train_on_pool(raw_pairs, storage.layout.artifact("reference_model"), model_name=config.model_name,
                          epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                          device=gpu.resolved_device(), retrain=config.retrain)
        out, m, batch, flops, manifest_dir = r.checkpoint, r.metrics, r.batch_size, r.flops, raw_pairs.manifest_dir
        md = {k: dg.MetadataValue.path(str(v)) if isinstance(v, Path) else v for k, v in r.facts(config.model_name).items()}
    warnings = learning_warnings(float(m["final_loss"]), batch)
    for w in warnings:
        context.log.warning(w)
    context.add_output_metadata({
        **md, "trained_on": config.train_on,
        "warnings": dg.MetadataValue.md("\n".join(f"- ⚠ {w}" for w in warnings) or "none"),
    })
    return ReferenceModel(checkpoint=str(out), model_name=config.model_name, steps=int(m["steps"]),
                          final_loss=float(m["final_loss"]), reused=bool(m["reused"]), trained_on=config.train_on,
                          manifest_dir=str(manifest_dir), samples_seen=int(m.get("samples_seen", 0)), flops=flops,
                          seconds=float(m.get("seconds", 0.0)))


def _train_on_curated_set(context: dg.AssetExecutionContext, name: str, config, raw_pairs: PoolManifest,
                          storage: StorageResource, gpu: GpuResource) -> tuple[Path, dict]:
    """The reference trainer on the curated set (``evaluate.dfn.train_curated_model``: the curated
    shards manifested under ``curated_pairs``, the reference model's settings rules), written as a
    new version of artefact ``name`` whose refs pin the curated manifest: the one path of
    ``curated_model`` and of ``reference_model`` with ``train_on: curated``. Its checkpoint and metrics."""
    from dynamics_assets.core.evaluate.dfn import train_curated_model
    from dynamics_assets.core.io.versions import Artefact, pinned

    artefact = Artefact(storage.layout.artifact(name))
    with artefact.write(base=artefact.current(), resume=True, keep_on_error=True) as staging:
        try:
            m = train_curated_model(raw_pairs.curated_dir, storage.layout.artifact("curated_pairs"),
                                    staging / f"{config.model_name}.pt", model_name=config.model_name,
                                    epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                                    device=gpu.resolved_device(), reuse=not config.retrain)
        except ValueError as e:
            raise dg.Failure(f"{name}: {e}") from None
        staging.refs.update(pinned(curated_manifest=m["manifest_dir"]))
    return staging.version_dir / f"{config.model_name}.pt", m


def _curated_metadata(out: Path, config, raw_pairs: PoolManifest, m: dict) -> dict:
    """The metadata of a model trained on the curated set: the set, its manifest, the compute."""
    return {
        "checkpoint": dg.MetadataValue.path(str(out)), "model_name": config.model_name,
        "curated_dir": dg.MetadataValue.path(raw_pairs.curated_dir),
        "curated_manifest": dg.MetadataValue.path(m["manifest_dir"]),
        "pairs": m["pairs"], "quarantined": m["quarantined"], "epochs": m["epochs"], "batch_size": m["batch_size"],
        "steps": int(m["steps"]), "samples_seen": int(m.get("samples_seen", 0)), "flops": float(m["flops"]),
        "device_seconds": round(float(m.get("seconds", 0.0)), 2), "final_loss": float(m["final_loss"]),
        "reused": bool(m["reused"]),
    }


class EmbeddingConfig(dg.Config):
    """Leave ``model_name`` empty to embed with the reference model; or name any open_clip model
    with a pretrained tag or a local checkpoint path in ``pretrained``."""

    model_name: Optional[str] = None
    pretrained: Optional[str] = None
    batch_size: int = 256


@dg.asset(group_name=GROUP, kinds={"pytorch", "numpy"}, pool="gpu")
def pair_embeddings(context: dg.AssetExecutionContext, config: EmbeddingConfig, raw_pairs: PoolManifest,
                    reference_model: ReferenceModel, storage: StorageResource, gpu: GpuResource,
                    compute: ComputeResource) -> PoolEmbeddings:
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
    with compute.engine_for(context.log) as engine:
        summary = embed_shards(spec, raw_pairs.manifest_dir, raw_pairs.shards_dir,
                               storage.layout.artifact("pair_embeddings"), batch_size=config.batch_size,
                               device=gpu.resolved_device(), num_workers=gpu.num_workers, engine=engine)
    out = summary.version_dir
    context.add_output_metadata({
        "embeddings_dir": dg.MetadataValue.path(str(out)), "encoder": spec.model_name,
        "dim": summary.dim, "shards_embedded": summary.shards_embedded,
        "shards_skipped (already done)": summary.shards_skipped, "pairs_embedded": summary.pairs_embedded,
        "invalid_rows": summary.invalid_rows, "seconds": round(summary.seconds, 2),
        "engine": compute.engine, "num_workers": gpu.num_workers,
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


class CuratedModelConfig(dg.Config):
    """The curated model (DFN's filtering network): the reference model's trainer on the user's
    curated set (``raw_shards.curated``). Empty epochs / batch: the reference model's rules."""

    model_name: str = "dynamics-tiny-32"
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    seed: int = 0
    retrain: bool = False


@dg.asset(group_name=GROUP, kinds={"pytorch"}, pool="gpu")
def curated_model(context: dg.AssetExecutionContext, config: CuratedModelConfig, raw_pairs: PoolManifest,
                  storage: StorageResource, gpu: GpuResource) -> CuratedModel:
    """An open_clip model trained on the curated set, not on the raw pool it then judges: the
    filtering network of DFN (``dfn_scores``). Its compute (steps, samples seen, FLOPs, seconds) is
    in this metadata; its version references the curated set's manifest. Skipped (nothing trained)
    when no curated set is named."""
    if not raw_pairs.curated_dir:
        context.add_output_metadata({"skipped": "no curated set (raw_shards.curated, --curated): nothing trained"})
        return CuratedModel(checkpoint=None, model_name=config.model_name)
    out, m = _train_on_curated_set(context, "curated_model", config, raw_pairs, storage, gpu)
    context.add_output_metadata(_curated_metadata(out, config, raw_pairs, m))
    return CuratedModel(checkpoint=str(out), model_name=config.model_name, manifest_dir=m["manifest_dir"],
                        shards_dir=raw_pairs.curated_dir, pairs=int(m["pairs"]), steps=int(m["steps"]),
                        samples_seen=int(m.get("samples_seen", 0)), flops=float(m["flops"]),
                        seconds=float(m.get("seconds", 0.0)), reused=bool(m["reused"]))


class DFNScoresConfig(dg.Config):
    """``fraction``: the keep fraction at which the filter's precision / recall are reported."""

    fraction: float = 0.3
    batch_size: int = 256


@dg.asset(group_name=GROUP, kinds={"numpy"}, pool="gpu")
def dfn_scores(context: dg.AssetExecutionContext, config: DFNScoresConfig, raw_pairs: PoolManifest,
               curated_model: CuratedModel, storage: StorageResource, gpu: GpuResource,
               compute: ComputeResource) -> DFNScores:
    """The data filtering network's score of every pool pair: the image·text cosine in the curated
    model's space (``scores.npy``, float32, pool order; embedded and scored shard by shard), read by
    the ``dfn`` strategy. Its quality as a filter (synthetic pool: AUC, precision and recall against
    the generator's dirt) is reported apart from its own zero-shot accuracy. Without a curated set, a
    DataComp pool's shipped ``clip_b32_similarity_score`` stands in (said in ``source``); else skipped."""
    from dynamics_assets.core.evaluate.dfn import SCORES_FILE
    from dynamics_assets.core.evaluate.dfn_scores import SKIPPED, score_pairs

    if not 0.0 < config.fraction <= 1.0:
        raise dg.Failure(f"dfn_scores.fraction: {config.fraction} is outside its range (0, 1]")
    r = score_pairs(raw_pairs, curated_model, storage.layout.artifact("dfn_scores"),
                    storage.layout.artifact("dfn_embeddings"), fraction=config.fraction, batch_size=config.batch_size,
                    device=gpu.resolved_device, precision=gpu.resolved_precision, num_workers=gpu.num_workers,
                    engine=lambda: compute.engine_for(context.log))
    if r.scores_dir is None:
        context.add_output_metadata({"skipped": SKIPPED})
        return DFNScores(scores_dir=None, source="none")
    scoring = dict(r.scoring)
    if "score_quantiles" in scoring:
        scoring["score_quantiles"] = dg.MetadataValue.json(scoring["score_quantiles"])
    context.add_output_metadata({
        "scores": dg.MetadataValue.path(str(r.scores_dir / SCORES_FILE)), "source": r.source, "dagster/row_count": r.n,
        **scoring, **r.filter_facts(),
        **({"filter/by_dirt": md_table(["dirt", "pairs", "mean score", f"kept at {config.fraction:g}"],
                                       r.by_dirt_rows())} if r.by_dirt else {}),
        **r.zero_shot_facts(),
        "curated_model_flops": curated_model.flops, "curated_model_steps": curated_model.steps,
    })
    return DFNScores(scores_dir=str(r.scores_dir), source=r.source, n=r.n)


@dg.asset(group_name=GROUP, kinds={"numpy"}, pool="gpu")
def curation_targets(context: dg.AssetExecutionContext, raw_pairs: PoolManifest, pair_embeddings: PoolEmbeddings,
                     storage: StorageResource, gpu: GpuResource) -> CurationTargets:
    """What the DataComp filters aim at, filled into recipes that leave it out: the pool's class
    names for ``text_filter`` (synthetic: the generator's concepts and the names its prompts use; a
    user's pool: the --eval set's classes, else the --target set's classnames.txt) and the target
    set's image embeddings for ``image_filter`` (the --target images, else the curated set's images,
    embedded with the pool's encoder)."""
    import numpy as np

    from dynamics_assets.core.io.atomic import save_npy, write_json
    from dynamics_assets.core.io.versions import Artefact

    names, names_source = _pool_classnames(raw_pairs)
    images, images_source = _target_images(raw_pairs)
    if images and not raw_pairs.has_images and pair_embeddings.encoder.checkpoint is None:
        context.log.warning(f"target images of {images_source} are not embedded: the pool's encoder "
                            f"({pair_embeddings.encoder.model_name}, shipped embeddings) has no weights here; give "
                            "image_filter.target_embeddings a .npy made with that encoder")
        images = None
    if not names and not images:
        context.add_output_metadata({"skipped": "no class names (no eval set, no --target classnames.txt) and no "
                                                "target or curated images"})
        return CurationTargets(targets_dir=None)
    artefact = Artefact(storage.layout.artifact("curation_targets"))
    meta = {}
    with artefact.write() as staging:
        if names:
            (staging / "classnames.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
        if images:
            emb = _embed_images(pair_embeddings.encoder, images, gpu.resolved_device())
            save_npy(staging / "target.npy", emb.astype(np.float32))
            meta["target_images"] = int(len(emb))
        write_json(staging / "targets.json", {"classnames_source": names_source, "target_source": images_source,
                                              "encoder": pair_embeddings.encoder.model_name, **meta})
    out = staging.version_dir
    context.add_output_metadata({
        "classnames": len(names or []), "classnames_source": names_source or "none",
        "target_images": meta.get("target_images", 0), "target_source": images_source or "none",
        "encoder": pair_embeddings.encoder.model_name, "targets_dir": dg.MetadataValue.path(str(out)),
    })
    return CurationTargets(targets_dir=str(out), classnames=str(out / "classnames.txt") if names else None,
                           target_embeddings=str(out / "target.npy") if images else None,
                           classnames_source=names_source, target_source=images_source)


def _pool_classnames(raw_pairs: PoolManifest) -> tuple[list[str], str]:
    from dynamics_assets.core.sample.strategies.text_filter import read_classnames

    if raw_pairs.eval_kind == "synthetic" and raw_pairs.eval_dir:
        return read_classnames(raw_pairs.eval_dir), "the synthetic pool's concepts (eval/concepts.parquet prompt names)"
    if raw_pairs.eval_dir:
        from dynamics_assets.core.evaluate.eval_set import validate_eval_set

        return list(validate_eval_set(raw_pairs.eval_dir).classes), f"the eval set's classes ({raw_pairs.eval_dir})"
    if raw_pairs.target_dir and (Path(raw_pairs.target_dir) / "classnames.txt").is_file():
        return read_classnames(str(Path(raw_pairs.target_dir) / "classnames.txt")), \
            f"the target set's classnames.txt ({raw_pairs.target_dir})"
    return [], ""


def _target_images(raw_pairs: PoolManifest):
    from dynamics_assets.core.ingest.curated import TargetSet, check_curated, check_target, target_images

    if raw_pairs.target_dir:
        target = check_target(raw_pairs.target_dir)
        if target.has_images:
            return list(target_images(target)), f"the target set ({raw_pairs.target_dir})"
    if raw_pairs.curated_dir:
        cur = check_curated(raw_pairs.curated_dir)
        shards = tuple(cur.root / s for s in cur.shards)
        return list(target_images(TargetSet(cur.root, (), shards, None))), \
            f"the curated set's images ({raw_pairs.curated_dir})"
    return None, ""


def _embed_images(spec: EncoderSpec, images, device: str, batch: int = 256):
    """Unit-norm image embeddings of (name, bytes) pairs; an image that does not decode is refused."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from dynamics_assets.core.evaluate.inference import inference, normalised
    from dynamics_assets.core.model.clip import load_encoder

    enc = load_encoder(spec, device)
    out = []
    with inference(enc.model):
        for s in range(0, len(images), batch):
            tensors = []
            for name, data in images[s:s + batch]:
                try:
                    tensors.append(enc.preprocess(Image.open(io.BytesIO(data)).convert("RGB")))
                except Exception as e:  # noqa: BLE001 (any decoder error: named)
                    raise dg.Failure(f"target image {name} does not decode ({type(e).__name__}: {e})") from None
            x = torch.stack(tensors).to(enc.device)
            out.append(normalised(enc.model.encode_image(x).float()).cpu().numpy())
    return np.concatenate(out)
