"""The ``checkpoint`` step's core: one recipe's epoch from its resolved settings to its record.

``epoch_job`` builds the ``EpochJob`` (the settings, the plan and pool it reads, where it writes,
the reference model online selection scores with); ``TrainedEpoch`` turns the launcher's metrics
into the ``CheckpointRecord`` (totals carried over the recipe's epochs) and the step's plain facts.
The launcher itself is ``train.launch.launch``. Importable without torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from dynamics_assets.core.records import CheckpointRecord, PlanRecord, PoolClusters
from dynamics_assets.core.train.job import EpochJob
from dynamics_assets.core.train.settings import TrainSettings


class CuratedReferenceError(ValueError):
    """``training.reference: curated`` without a usable curated model."""


def curated_reference(curated_root: str | Path, recipe: str) -> tuple[str, float]:
    """The current curated_model checkpoint (online selection's reference with ``training.reference:
    curated``) and its training FLOPs, read from the record its trainer wrote beside it; refused,
    naming the recipe and what provides it, when there is none."""
    from dynamics_assets.core.io.versions import Artefact
    from dynamics_assets.core.train.loop import trained_record
    from dynamics_assets.core.train.reference import training_flops

    version = Artefact(curated_root).current()
    found = sorted(version.glob("*.pt")) if version is not None else []
    if len(found) != 1:
        raise CuratedReferenceError(
            f"recipe {recipe}: training.reference is 'curated' but there is no curated model"
            + (f" ({len(found)} checkpoints in {version})" if found else "")
            + ": materialise curated_model with a curated set (--curated DIR; the synthetic pool: "
              "--curated synthetic), or set reference: pool")
    try:
        record = trained_record(found[0])
    except ValueError as e:
        raise CuratedReferenceError(f"recipe {recipe}: training.reference is 'curated': {e}") from None
    return str(found[0]), float(training_flops(record["run"]["model_name"], int(record["metrics"]["samples_seen"])))


@dataclass(frozen=True)
class Reference:
    """The model online selection scores with: ``checkpoint`` (None without selection) and, for the
    curated model, its training FLOPs (counted once in the recipe's compute)."""

    checkpoint: Optional[str]
    kind: str = "pool"
    curation_flops: float = 0.0


def reference_for(settings: TrainSettings, pool_reference: Optional[str],
                  curated: Callable[[], tuple[str, float]]) -> Reference:
    """Online selection's reference: reference_model's checkpoint, or with ``reference: curated``
    the curated model's (``curated()``: its checkpoint and training FLOPs, e.g. ``curated_reference``);
    none without selection."""
    if not settings.selection:
        return Reference(None, settings.reference)
    if settings.reference == "curated":
        checkpoint, flops = curated()
        return Reference(checkpoint, "curated", flops)
    return Reference(pool_reference, settings.reference)


def epoch_job(settings: TrainSettings, plan: PlanRecord, clusters: PoolClusters, previous: Optional[CheckpointRecord],
              reference: Reference, *, out: str | Path, epoch: int, device: str, precision: str,
              num_workers: int) -> EpochJob:
    """The epoch's job: the resolved settings, the plan and pool it reads, where it writes."""
    return EpochJob(
        **dataclasses.asdict(settings),
        plan_dir=plan.plan_dir, manifest_dir=clusters.manifest_dir, shards_dir=clusters.shards_dir,
        out_checkpoint=str(out), epoch=epoch, pool_version=clusters.clusters_dir,
        previous_checkpoint=previous.checkpoint if previous else None, device=device, precision=precision,
        reference_checkpoint=reference.checkpoint,
        cluster_ids=str(Path(clusters.clusters_dir) / "cluster_id.npy"), n_clusters=clusters.k,
        num_workers=num_workers)


@dataclass(frozen=True)
class TrainedEpoch:
    """What the launcher returned for ``job`` (rank 0's metrics), with the plan trained and the reference."""

    job: EpochJob
    metrics: Mapping[str, Any]
    plan: PlanRecord
    reference: Reference
    launcher: str

    def record(self, recipe: str, previous: Optional[CheckpointRecord]) -> CheckpointRecord:
        """The checkpoint's record: samples, device seconds and scoring FLOPs summed over the recipe's
        epochs; the curated model's FLOPs counted once (it is trained once for all of them)."""
        m, before = self.metrics, previous
        return CheckpointRecord(
            checkpoint=str(m["checkpoint"]), model_name=self.job.model_name, recipe=recipe, epoch=self.job.epoch,
            pool_version=self.plan.pool_version, samples_seen=int(m["samples_seen"]),
            device_seconds=(before.device_seconds if before else 0.0) + float(m["device_seconds"]),
            scoring_flops=(before.scoring_flops if before else 0.0) + float(m.get("scoring_flops", 0.0)),
            global_step=int(m["global_step"]), final_loss=float(m["final_loss"]),
            cluster_loss=m.get("cluster_loss"), plan_dir=self.plan.plan_dir,
            curation_flops=max(before.curation_flops if before else 0.0, self.reference.curation_flops))

    def facts(self, trained_plan: str) -> dict[str, Any]:
        """The step's metadata as plain values (``Path``: a path; ``open_clip_model``: Markdown), in
        the order shown; a metric of the same name replaces an earlier entry."""
        m, job = self.metrics, self.job
        selection = {"reference": self.reference.kind, "reference_checkpoint": Path(str(self.reference.checkpoint)),
                     "curation_flops": self.reference.curation_flops} if job.selection else {}
        return {
            "checkpoint": Path(str(m["checkpoint"])), "plan_dir": self.plan.plan_dir, "trained_plan": trained_plan,
            **{k: v for k, v in m.items() if isinstance(v, (int, float, str))},
            # the version is also an open_clip model folder: open_clip_config.json + open_clip_model.safetensors
            "open_clip_model": f"`open_clip.create_model_and_transforms(\"local-dir:{m['version_dir']}\")` · "
                               f"`clip_benchmark eval --model local-dir:{m['version_dir']} …`",
            "model_dir": Path(str(m["version_dir"])), "reused": bool(m.get("reused", False)),
            "batch_size": job.batch_size, "lr": job.lr, "seed": job.seed, "n_epochs": job.n_epochs,
            "launcher": self.launcher, **selection,
        }
