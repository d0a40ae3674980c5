"""What one training epoch is (``EpochJob``) and the rules every trainer of it shares: the rank's
share of the plan, the steps of an epoch, the schedule (``train_config``), what a checkpoint
records (``checkpoint_extra``) and where its file lies (``checkpoint_file``).

The plain epoch (``epoch``) and Divide and Contrast (``divide_contrast``) both build on this module,
so neither imports the other's internals; ``epoch`` re-exports these names.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamics_assets.core.io import versions
from dynamics_assets.core.model.devices import resolve_precision
from dynamics_assets.core.train.loop import TrainConfig, warmup_steps
from dynamics_assets.core.train.online_selection import super_batch_size
from dynamics_assets.core.train.settings import TrainSettings

__all__ = ["CHECKPOINT_NAME", "RUN_FACTS", "EpochJob", "checkpoint_extra", "checkpoint_file", "keeps_last_batch",
           "plan_share", "rank_world", "settings_identity", "steps_per_epoch", "train_config"]

CHECKPOINT_NAME = "checkpoint.pt"  # in a committed checkpoint version


@dataclass(frozen=True, kw_only=True)
class EpochJob(TrainSettings):
    """One epoch of one recipe: the training settings, plus where its inputs and output are."""

    plan_dir: str
    manifest_dir: str
    # The pool (clusters) version this run reads (its id, version directory or root); required: the
    # plan must have been drawn on it, and the manifest must be the one it pins (``io.lineage``).
    pool_version: str
    shards_dir: str
    out_checkpoint: str
    epoch: int
    n_epochs: int  # resolved: the cosine schedule's span
    previous_checkpoint: str | None = None  # None: epoch 1 starts from init_pretrained / scratch
    device: str = "cpu"
    precision: str = "bf16"
    cluster_ids: str | None = None  # the pool's cluster_id.npy: record the epoch's per-cluster loss (cluster_loss.npy)
    n_clusters: int = 0  # with cluster_ids: K
    reference_checkpoint: str | None = None  # with selection: the reference model's open_clip checkpoint
    num_workers: int = 0  # DataLoader workers decoding per process (0: in it); the batches do not depend on it

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (got {self.num_workers})")
        if self.selection is None:
            return
        if not self.reference_checkpoint:
            raise ValueError(f"selection {self.selection!r} needs a reference_checkpoint")
        super_batch_size(self.batch_size, self.filter_ratio)  # validates filter_ratio

    @property
    def loader_batch_size(self) -> int:
        """Pairs pulled from the plan per step: the super-batch with selection, else the batch."""
        return self.batch_size if self.selection is None else super_batch_size(self.batch_size, self.filter_ratio)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "EpochJob":
        return cls(**json.loads(Path(path).read_text()))


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside ``torch.distributed``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def plan_share(indices: np.ndarray, counts: np.ndarray, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank r's disjoint share of a plan: entries r, r+W, … (every copy of a sample on one rank)."""
    return np.asarray(indices[rank::world]), np.asarray(counts[rank::world])


def keeps_last_batch(job: EpochJob, world: int) -> bool:
    """Whether the epoch trains the samples left after the last full batch (see steps_per_epoch)."""
    return world == 1 and job.selection is None


def steps_per_epoch(plan_size: int, batch_size: int, world: int, keep_last: bool = True) -> int:
    """Steps of an epoch (for the schedule). One process trains the whole plan: the samples left
    after the last full batch form a smaller last batch (open_clip drops them; here samples seen =
    plan size, so recipes are compared on exactly what they planned). Under DDP every rank must
    contribute equal-sized batches to the gathered contrastive loss, and online selection scores
    whole super-batches, so there the remainder (fewer than world × batch samples) is dropped;
    ``samples_seen`` counts what was trained."""
    if world == 1 and keep_last:
        return -(-plan_size // batch_size)
    return plan_size // (batch_size * world)


def train_config(job: EpochJob, plan_size: int, world: int, device: str) -> TrainConfig:
    per_epoch = max(1, steps_per_epoch(plan_size, job.loader_batch_size, world, keeps_last_batch(job, world)))
    total = per_epoch * job.n_epochs
    return TrainConfig(lr=job.lr, weight_decay=job.weight_decay, warmup_steps=warmup_steps(job.warmup_fraction, total),
                       total_steps=total, grad_clip_norm=job.grad_clip_norm, batch_size=job.batch_size,
                       precision=resolve_precision(job.precision, device), device=device, seed=job.seed + job.epoch,
                       checkpoint_every_steps=job.checkpoint_every_steps)


RUN_FACTS = ("seconds", "device_seconds", "device", "resumed_at_step", "ranks_in_sync", "dnc_experts_dir")
"""Metrics that describe how a run went (timings, host, where it resumed, paths), not what it
trained: kept in the version's ``_version.json`` meta, never in ``checkpoint.pt`` (whose bytes the
version id hashes)."""


def checkpoint_extra(job: EpochJob, metrics: dict[str, Any], last_loss: float, **lists: Any) -> dict[str, Any]:
    """``checkpoint.pt``'s ``extra``: what determines and describes the trained weights (settings,
    counts, loss, scoring compute), nothing that changes from run to run of the same training
    (wall-clock seconds, host, paths, a resume point): the same plan, seed and settings give
    byte-identical checkpoints (on a deterministic device) and so the same version id."""
    return {"last_loss": last_loss, "settings": settings_identity(job), **lists,
            **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and k not in RUN_FACTS}}


def settings_identity(job: EpochJob) -> dict[str, Any]:
    """The settings a checkpoint records and a step checkpoint must match; DnC's settings only when
    on, ``reference`` only when not 'pool' (older step checkpoints, written before they existed,
    still resume; the reference file's hash is in the selection identity anyway)."""
    return {k: v for k, v in asdict(job.settings()).items()
            if (job.dnc_experts or not k.startswith("dnc_")) and not (k == "reference" and v == "pool")}


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file of a checkpoint version directory or artefact root (a file: itself)."""
    p = Path(path)
    return versions.resolve(p) / CHECKPOINT_NAME if p.is_dir() else p
