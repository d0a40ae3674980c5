"""The ``eval_report`` step's core: one recipe's checkpoint of one epoch evaluated on the pool's
evaluation inputs, with the compute it took.

``check_inputs`` refuses a checkpoint trained on another pool version than the one evaluated;
``evaluation_inputs`` picks the eval set (the synthetic pool's held-out set, or a user's labelled
set with its classes counted in the pool's captions) and the retrieval slice of a user's pool;
``evaluate_checkpoint`` runs it (and, at the last epoch, the synthetic pool's training-style set)
and adds the ``compute/*`` figures to the report's metrics.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dynamics_assets.core.records import CheckpointRecord, PoolClusters, PoolManifest

TRAIN_STYLE_DIR = "eval_train_style"  # the generator's training-style eval set, beside eval/
# the headline metrics an evaluation shows: (shown name, metric key)
HEADLINE = (("top1", "zero_shot/top1"), ("top5", "zero_shot/top5"), ("mean_per_class", "zero_shot/mean_per_class"),
            ("head", "zero_shot/head"), ("middle", "zero_shot/middle"), ("tail", "zero_shot/tail"),
            ("i2t_r1", "retrieval/i2t_r1"), ("t2i_r1", "retrieval/t2i_r1"),
            ("train_style_top1", "train_style/top1"), ("train_style_tail", "train_style/tail"))


class PoolVersionMismatch(ValueError):
    """The checkpoint was trained on a plan of another pool version than the one evaluated."""


def check_inputs(checkpoint: CheckpointRecord, raw_pairs: PoolManifest, clusters: PoolClusters) -> None:
    """Refuses (a ``ValueError``: ``StalePlanError``, ``LineageError``, ``PoolVersionMismatch``) an
    evaluation whose checkpoint, pool version and manifest do not belong together."""
    from dynamics_assets.core.io import lineage

    lineage.check_evaluation_inputs(checkpoint.checkpoint, clusters.clusters_dir, manifest=raw_pairs.manifest_dir)
    if checkpoint.pool_version != clusters.pool_version:
        raise PoolVersionMismatch(
            f"checkpoint {checkpoint.checkpoint} was trained on a plan of pool version "
            f"{checkpoint.pool_version}; this evaluation reads pool version {clusters.pool_version} "
            "(its clusters would not be the ones the plan was drawn from): redraw and retrain the epoch")


def evaluation_inputs(raw_pairs: PoolManifest):
    """(eval set or None, held-out pool pairs or None, notes): the synthetic pool's own held-out
    set; a user's labelled set, its classes counted in the pool's captions (DuckDB, word
    boundaries, synonyms) for head / middle / tail; and, for a user's pool, retrieval on the slice
    of the pool held out of every plan. Without a labelled set: retrieval only, said in the notes."""
    from dynamics_assets.core.evaluate import frequency, holdout, labelled
    from dynamics_assets.core.evaluate.report import load_eval_set

    notes: dict = {}
    if raw_pairs.eval_kind == "synthetic":
        return load_eval_set(raw_pairs.eval_dir), None, notes
    held_out = holdout.load_held_out(raw_pairs.manifest_dir, raw_pairs.shards_dir)
    notes["held_out"] = (f"{len(held_out)} pairs of the pool (sha256(sample_id) mod 1000 < "
                         f"{holdout.HOLDOUT_PER_MILLE}) kept out of every plan: image↔text retrieval")
    if raw_pairs.eval_kind == "labelled" and raw_pairs.eval_dir:
        eval_set = labelled.load_labelled_set(raw_pairs.eval_dir)
        freq = frequency.caption_frequency(raw_pairs.manifest_dir, eval_set.prompt_names)
        notes["labelled_set"] = labelled.describe(eval_set)
        notes["train_frequency"] = ("ok captions of the pool naming the class or a synonym "
                                    "(DuckDB, word boundaries, case-insensitive, plurals)")
        return labelled.with_train_frequency(eval_set, freq), held_out, notes
    notes["zero_shot"] = "no labelled set"
    return None, held_out, notes


def with_train_style(report, raw_pairs: PoolManifest, enc, device: str):
    """The synthetic pool's second eval set, rendered in the training style (``eval_train_style/``
    beside ``eval/``, when the generator wrote one): its zero-shot metrics as ``train_style/*`` and
    its per-image outcomes (per_image_train_style.parquet). The main set stays the held-out style."""
    from dynamics_assets.core.evaluate.report import evaluate_model, load_eval_set

    if raw_pairs.eval_kind != "synthetic" or not raw_pairs.eval_dir:
        return report
    train_dir = Path(raw_pairs.eval_dir).parent / TRAIN_STYLE_DIR
    if not any(train_dir.glob("eval-*.tar")):
        return report
    eval_set = load_eval_set(train_dir, concepts_dir=raw_pairs.eval_dir)  # the same concepts and prompts
    style = evaluate_model(enc.model, enc.preprocess, enc.tokenizer, eval_set, device=device, progress=None)
    metrics = dict(report.metrics)
    metrics |= {f"train_style/{k.split('/', 1)[1]}": v for k, v in style.metrics.items()
                if k.startswith("zero_shot/") and "freq_bin" not in k}
    per_image = {**report.per_image, "train_style": style.per_image["eval"]}
    notes = {**report.notes, "train_style": f"{style.n_images} images of {train_dir.name}/ (training style): "
                                            "train_style/* metrics"}
    return dataclasses.replace(report, metrics=metrics, per_image=per_image, notes=notes)


def compute_of(checkpoint: CheckpointRecord, model) -> dict[str, Any]:
    """The compute behind the checkpoint: samples seen, device seconds, training, scoring and
    curation FLOPs (the curated model a recipe's online selection scores with, trained once for all
    its epochs; 0 otherwise, and for records from before the field) and their total."""
    from dynamics_assets.core.model.flops import forward_flops_per_pair, train_flops

    flops_pair = forward_flops_per_pair(model, model.visual.image_size, model.context_length)
    training = float(train_flops(checkpoint.samples_seen, flops_pair))
    curation = float(getattr(checkpoint, "curation_flops", 0.0))
    return {"samples_seen": checkpoint.samples_seen, "device_seconds": checkpoint.device_seconds,
            "train_flops": training, "scoring_flops": checkpoint.scoring_flops, "curation_flops": curation,
            "total_flops": training + checkpoint.scoring_flops + curation,
            "forward_flops_per_pair": int(flops_pair), "epoch": checkpoint.epoch}


@dataclass(frozen=True)
class CheckpointEvaluation:
    report: Any  # report.EvalReport, its metrics with compute/*
    compute: dict[str, Any]
    notes: dict  # what the evaluation inputs said (the eval set, the held-out slice)
    has_eval_set: bool
    held_out_pairs: int

    @property
    def headline(self) -> dict[str, float]:
        m = self.report.metrics
        return {name: m[key] for name, key in HEADLINE if key in m}

    @property
    def zero_shot(self) -> str:
        return str(self.notes.get("zero_shot", "labelled set" if self.has_eval_set else "none"))


def evaluate_checkpoint(checkpoint: CheckpointRecord, raw_pairs: PoolManifest, clusters: PoolClusters, device: str,
                        *, train_style: bool) -> CheckpointEvaluation:
    """Zero-shot and retrieval metrics of the checkpoint (``report.evaluate_model``), its eval
    images placed in the pool's clusters with the encoder that embedded the pool (the space its
    centroids live in); with ``train_style`` (the last epoch: what the comparison reads) the
    training-style set too; the compute added as ``compute/*``."""
    from dynamics_assets.core.evaluate.report import evaluate_model, pool_clusters_of_images
    from dynamics_assets.core.model.clip import EncoderSpec, load_encoder

    eval_set, held_out, notes = evaluation_inputs(raw_pairs)
    enc = load_encoder(EncoderSpec(checkpoint.model_name, checkpoint.checkpoint), device)
    cluster_of_image: Optional[Any] = (pool_clusters_of_images(clusters.encoder, clusters.clusters_dir, eval_set, device)
                                       if eval_set is not None else None)
    report = evaluate_model(enc.model, enc.preprocess, enc.tokenizer, eval_set, device=device,
                            cluster_of_image=cluster_of_image, held_out=held_out, notes=notes)
    if train_style:
        report = with_train_style(report, raw_pairs, enc, device)
    compute = compute_of(checkpoint, enc.model)
    report.metrics.update({f"compute/{k}": v for k, v in compute.items()})
    return CheckpointEvaluation(report, compute, notes, eval_set is not None,
                                len(held_out) if held_out is not None else 0)
