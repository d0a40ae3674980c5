"""Train one epoch on one sample plan: the step behind every ``checkpoint`` partition.

Epoch e trains on exactly the samples of plan e (each as many times as its multiplicity,
shuffled, never twice in one contrastive batch), starting from the checkpoint of epoch e−1
(weights, AdamW state, global step, samples seen) or, for the first epoch, from scratch or a
configured open_clip model. The cosine schedule with warm-up spans the whole run
(``n_epochs × steps per epoch``), indexed by the global step.

Runs alone (world size 1) or under ``torchrun`` with DDP: rank r trains on plan entries r, r+W,
r+2W, … — disjoint, so no sample is seen twice in an epoch beyond its planned multiplicity — and
all ranks take the same number of steps (the minimum over ranks). Only rank 0 writes.
Step checkpoints let an interrupted epoch resume where it stopped, with the same final weights.
Each process decodes and preprocesses its batches in ``num_workers`` DataLoader workers
(``loader.batch_loader``); the batches and the weights do not depend on ``num_workers``.

Online batch selection (``selection`` = 'jest' | 'activeclip', see ``online_selection``): every
step pulls a super-batch of round(batch_size / (1 − filter_ratio)) pairs from the plan's loader,
scores it with the learner and the frozen reference model, and trains on the ``batch_size`` chosen
pairs; steps per epoch = plan size // (super-batch × world). The draw of step i is seeded with
(seed, epoch, rank, i), so a resumed epoch makes the same choices. The metrics (and the epoch
checkpoint's extra) add the samples scored and the scoring FLOPs of the epoch (global over ranks)
and their running totals, so compute comparisons include the cost of scoring.

    torchrun --nproc-per-node 2 -m dynamics_assets.core.train.epoch job.json
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from dynamics_assets.core.model.devices import resolve_device, resolve_precision
from dynamics_assets.core.model.clip import (EncoderSpec, autocast_for, create_model, read_checkpoint, resolve_weights,
                                             save_checkpoint, write_model_folder)
from dynamics_assets.core.io import lineage, versions
from dynamics_assets.core.io.hashing import file_sha256
from dynamics_assets.core.io.progress import Progress, bar
from dynamics_assets.core.train.online_selection import check_same_inputs, load_reference_model, scoring_flops_per_pair, seeded_generator, select
from dynamics_assets.core.train.loader import PairBatches, batch_loader
from dynamics_assets.core.ingest.pool import collate
from dynamics_assets.core.sample import read_plan
from dynamics_assets.core.train.loop import Batch, TrainConfig, TrainState, load_train_state, train_steps
from dynamics_assets.core.train.job import (  # noqa: F401 (re-exported: EpochJob and the rules divide_contrast shares)
    CHECKPOINT_NAME, RUN_FACTS, EpochJob, checkpoint_extra, checkpoint_file, keeps_last_batch, plan_share, rank_world,
    settings_identity, steps_per_epoch, train_config,
)


STEP_NAME = "step.pt"  # in the staging directory only, while the epoch runs


def _initial_state(job: EpochJob, device: str) -> tuple[torch.nn.Module, Any, TrainState]:
    if job.previous_checkpoint:
        ckpt = read_checkpoint(checkpoint_file(job.previous_checkpoint))
        model, _, preprocess = create_model(job.model_name, None, torch.device(device), seed=job.seed)
        model.load_state_dict(ckpt["state_dict"])
        state = TrainState(step=ckpt["step"], samples_seen=ckpt["samples_seen"], optimizer=ckpt["optimizer"],
                           last_loss=float(ckpt["extra"].get("last_loss", float("nan"))))
        return model, preprocess, state
    pretrained = None
    if job.init_pretrained:
        pretrained, _ = resolve_weights(EncoderSpec(job.model_name, job.init_pretrained))
    model, _, preprocess = create_model(job.model_name, pretrained, torch.device(device), seed=job.seed)
    return model, preprocess, TrainState()


def run_epoch(job: EpochJob, *, on_step: Callable[[int, dict[str, float]], None] | None = None,
              progress: Progress | None = None) -> dict[str, Any]:
    """Train epoch ``job.epoch`` on its plan; returns metrics (rank 0 writes the checkpoint).

    ``job.out_checkpoint`` is an artefact root (``io.versions``): rank 0 holds its lock for the
    whole epoch, keeps its step checkpoints in the staging directory (never visible to readers;
    an interrupted epoch, by an exception or a kill, resumes from them) and commits one version
    holding ``checkpoint.pt`` (refs: the plan and the previous checkpoint's versions). The metrics
    name it: ``checkpoint`` (the file), ``version_dir``, ``version_id``. A plan drawn on another
    pool version than ``job.pool_version`` is refused (``versions.StalePlanError``), and so is a
    manifest other than the one that pool pins (``lineage.LineageError``).

    ``progress`` gets ``(steps done in this epoch, steps of the epoch)`` on rank 0 (default:
    ``io.progress.bar``)."""
    rank, world = rank_world()
    lineage.check_plan_inputs(job.plan_dir, job.pool_version, "training", manifest=job.manifest_dir)
    inputs = training_inputs(job, world)
    reused = [reusable_version(job.out_checkpoint, inputs) if rank == 0 else None]
    if world > 1:  # every rank takes rank 0's decision
        torch.distributed.broadcast_object_list(reused, src=0)
    if reused[0] is not None:
        return _reuse(job, Path(reused[0])) if rank == 0 else {"reused": True}
    writer = contextlib.nullcontext()
    meta: dict[str, Any] = {}  # _version.json's meta (not hashed into the id): filled before the commit
    if rank == 0:
        refs = versions.pinned(plan=job.plan_dir, previous=_version_of(job.previous_checkpoint))
        writer = versions.Artefact(job.out_checkpoint, "checkpoint").write(refs=refs, resume=True, keep_on_error=True,
                                                                           meta=meta)
    with writer as staging:
        shared = [None if staging is None else str(staging.path)]
        if world > 1:  # the other ranks read rank 0's step checkpoint when resuming
            torch.distributed.broadcast_object_list(shared, src=0)
        metrics = _run_epoch(job, Path(shared[0]), on_step=on_step, progress=progress)
        if staging is not None:
            ckpt = read_checkpoint(staging.path / CHECKPOINT_NAME)
            write_model_folder(staging.path, job.model_name, ckpt["state_dict"])
            experts = metrics.get("dnc_experts_dir")
            if experts and versions.is_version_dir(experts) and Path(experts) != staging.path:
                staging.refs["dnc_experts"] = Path(experts)  # later DnC epochs find the teachers by this ref
            meta.update(inputs=inputs, metrics=_plain(metrics), host=_host_facts(metrics.get("device", job.device)))
    if staging is not None:
        metrics.update(_version_metrics(staging.version_dir), reused=False)
    return metrics


def training_inputs(job: EpochJob, world: int) -> dict[str, Any]:
    """Everything that determines an epoch's checkpoint: the plan's and the previous checkpoint's
    versions, the settings, the schedule span, the world size and the device kind and precision.
    A committed version recorded with the same inputs is that checkpoint (``reusable_version``)."""
    device = resolve_device(job.device)
    inputs: dict[str, Any] = {
        "plan_version": plan_identity(job.plan_dir), "pool_version": _pool_id(job.plan_dir), "epoch": job.epoch,
        "previous": _checkpoint_identity(job.previous_checkpoint), "settings": settings_identity(job),
        "n_epochs": job.n_epochs, "world": world, "device_type": device.split(":")[0],
        "precision": resolve_precision(job.precision, device)}
    if job.init_pretrained and not job.previous_checkpoint:
        inputs["init"] = resolve_weights(EncoderSpec(job.model_name, job.init_pretrained))[1]
    if job.selection is not None:
        inputs["selection"] = _selection_identity(job)
    if job.cluster_ids:
        inputs["cluster_loss"] = job.n_clusters
    return inputs


def reusable_version(out_checkpoint: str | os.PathLike, inputs: dict[str, Any]) -> Path | None:
    """A committed version of ``out_checkpoint`` trained from exactly ``inputs`` whose files are
    intact (hashed against its ``_version.json``), the current one first; None if there is none."""
    artefact = versions.Artefact(out_checkpoint, "checkpoint")
    current = artefact.current()
    for v in ([current] if current else []) + [v for v in artefact.versions() if v != current]:
        try:
            meta = versions.version_info(v).get("meta") or {}
        except (OSError, ValueError):
            continue
        if meta.get("inputs") == json.loads(json.dumps(inputs)) and (v / CHECKPOINT_NAME).is_file() \
                and not versions.verify(v):
            return v
    return None


def _reuse(job: EpochJob, version: Path) -> dict[str, Any]:
    """The metrics of a committed checkpoint trained from the same inputs (its recorded timings
    included: the compute that made it), made the current version again if it is not."""
    artefact = versions.Artefact(job.out_checkpoint, "checkpoint")
    if artefact.current() != version:  # re-commit the same files and refs: the same id, CURRENT names it
        info = versions.version_info(version)
        refs = {name: (version / ref["path"]).resolve() for name, ref in info.get("refs", {}).items()}
        with artefact.write(refs=refs, base=version, meta=info.get("meta")) as staging:
            pass
        version = staging.version_dir
    meta = versions.version_info(version).get("meta") or {}
    return {**meta.get("metrics", {}), **_version_metrics(version), "reused": True}


def _version_metrics(version_dir: Path) -> dict[str, Any]:
    out = {"checkpoint": str(version_dir / CHECKPOINT_NAME), "version_dir": str(version_dir),
           "version_id": version_dir.name, "model_dir": str(version_dir),
           "open_clip_model": f"local-dir:{version_dir}"}
    if (version_dir / "cluster_loss.npy").is_file():
        out["cluster_loss"] = str(version_dir / "cluster_loss.npy")
    return out


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, (bool, int, float, str, list))}


def _host_facts(device: str) -> dict[str, Any]:
    import platform

    facts = {"hostname": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        facts["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return facts


def _pool_id(plan_dir: str | os.PathLike) -> str | None:
    try:
        return json.loads((versions.resolve(plan_dir) / "plan.json").read_text()).get("pool_version")
    except (OSError, ValueError):
        return None


def _checkpoint_identity(checkpoint: str | None) -> str | None:
    """A previous checkpoint's committed version id, or the sha256 of a plain file."""
    if checkpoint is None:
        return None
    v = versions.resolve(_version_of(checkpoint))
    if versions.is_version_dir(v):
        return v.name
    return "sha256:" + file_sha256(checkpoint_file(checkpoint))


def _version_of(checkpoint: str | None) -> Path | None:
    if checkpoint is None:
        return None
    p = Path(checkpoint)
    return p.parent if p.is_file() else p


def _run_epoch(job: EpochJob, work_dir: Path, *, on_step: Callable[[int, dict[str, float]], None] | None = None,
               progress: Progress | None = None) -> dict[str, Any]:
    """The epoch itself; ``work_dir``: rank 0's staging directory (step and final checkpoint)."""

    import open_clip

    if job.dnc_experts and job.epoch >= 2:  # Divide and Contrast: experts (epoch 2), distillation (≥ 3)
        from dynamics_assets.core.train.divide_contrast import run_phase
        return run_phase(job, work_dir, on_step=on_step)
    started = time.perf_counter()
    rank, world = rank_world()
    device = resolve_device(job.device)
    if device.startswith("cuda") and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        torch.cuda.set_device(device)
    plan = read_plan(job.plan_dir)
    cfg = train_config(job, plan.size, world, device)
    indices, counts = plan_share(plan.indices, plan.multiplicity, rank, world)
    batches = PairBatches(Path(job.manifest_dir), Path(job.shards_dir), (job.seed, job.epoch, rank),
                          job.loader_batch_size, job.buffer_size, indices=indices, counts=counts,
                          keep_last=keeps_last_batch(job, world))
    n_batches = batches.num_batches()
    if world > 1:  # every rank must take the same number of steps
        t = torch.tensor([n_batches], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        n_batches = int(t.item())
    if n_batches == 0:
        raise ValueError(f"plan {job.plan_dir} has no sample to train on"
                         + (f" ({world} processes need at least {job.loader_batch_size} each)" if world > 1 else ""))

    model, preprocess, state = _initial_state(job, device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model.to(device), device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    start_step = state.step
    step_path = work_dir / STEP_NAME
    # Everything that changes the sample order or the updates: a step checkpoint of another order
    # (batch size, seed, shuffle buffer, plan) or of other settings is never resumed.
    identity = {"plan": plan.meta.get("pool_version"), "plan_version": plan_identity(job.plan_dir),
                "plan_meta": {k: plan.meta.get(k) for k in ("recipe", "seed", "epoch", "strategy")},
                "epoch": job.epoch, "world": world, "plan_size": plan.size, "start_step": start_step,
                "settings": settings_identity(job), "n_epochs": job.n_epochs}
    if job.selection is not None:
        identity["selection"] = _selection_identity(job)
    if step_path.exists():
        resumed = load_train_state(step_path, getattr(model, "module", model), expect_extra=identity)
        if resumed is not None:
            state = resumed
    state.extra = identity
    done = state.step - start_step
    tokenizer = open_clip.get_tokenizer(job.model_name)

    core = getattr(model, "module", model)
    train_batches: Iterator[Batch] = iter(batch_loader(
        batches, functools.partial(collate, preprocess=preprocess, tokenizer=tokenizer), skip=done, stop=n_batches,
        num_workers=job.num_workers, pin_memory=device.startswith("cuda")))
    if job.selection is not None:
        reference = load_reference_model(job.reference_checkpoint, device)
        check_same_inputs(core, reference)
        flops_per_pair = scoring_flops_per_pair(core, reference)
        train_batches = _selected(job, core, reference, train_batches, done, rank, cfg, flops_per_pair)
    recorder = None
    if job.cluster_ids and job.selection is None:  # per-cluster training loss (train.cluster_loss), ~0 FLOPs
        from dynamics_assets.core.train.cluster_loss import ClusterLossRecorder, replayed_batches
        recorder = ClusterLossRecorder(job.cluster_ids, job.n_clusters, replayed_batches(batches, done))
    state = train_steps(model, train_batches, cfg, state=state, on_example_losses=recorder,
                        step_checkpoint_path=step_path if rank == 0 else None,
                        model_name=job.model_name, on_step=on_step if rank == 0 else None,
                        progress=_epoch_progress(progress, job.epoch, start_step, n_batches, rank))
    samples_seen = state.samples_seen
    if world > 1:  # ranks count their own samples; the checkpoint records the global count
        local = torch.tensor([state.samples_seen - _initial_samples(job)], dtype=torch.int64)
        torch.distributed.all_reduce(local)
        samples_seen = _initial_samples(job) + int(local.item())
    in_sync = _ranks_in_sync(core) if world > 1 else True
    seconds = time.perf_counter() - started
    metrics = {"ranks_in_sync": in_sync, "epoch": job.epoch, "steps": state.step - start_step, "global_step": state.step,
               "samples_seen": samples_seen, "epoch_samples": samples_seen - _initial_samples(job),
               "final_loss": state.last_loss, "seconds": seconds, "device": device, "world_size": world,
               "device_seconds": seconds * world, "resumed_at_step": done,
               "precision": cfg.precision}
    if job.selection is not None:
        metrics.update(_scoring_metrics(job, metrics["steps"] * world, flops_per_pair))
    if recorder is not None:
        recorder.all_reduce()
    if rank == 0:
        if recorder is not None:
            recorder.save(work_dir)
        save_checkpoint(work_dir / CHECKPOINT_NAME, core, model_name=job.model_name, epoch=job.epoch, step=state.step,
                        samples_seen=samples_seen, optimizer=state.optimizer,
                        extra=checkpoint_extra(job, metrics, state.last_loss))
        step_path.unlink(missing_ok=True)
    return metrics


def plan_identity(plan_dir: str | os.PathLike) -> str:
    """What identifies a plan for resuming: its committed version id, or for a plain directory the
    sha256 of its indices and multiplicities (another draw at the same size is another plan)."""
    d = versions.resolve(plan_dir)
    if versions.is_version_dir(d):
        return d.name
    return "sha256:" + file_sha256(d / "indices.npy")[:16] + file_sha256(d / "multiplicity.npy")[:16]


def _epoch_progress(progress: Progress | None, epoch: int, start_step: int, n_batches: int, rank: int) -> Progress:
    """train_steps' ``(global step, run total)`` as ``(step of the epoch, n_batches)``; silent off rank 0."""
    progress = None if rank != 0 else progress if progress is not None else bar(f"epoch {epoch}", "step")
    if progress is None:
        return lambda step, total: None
    return lambda step, total: progress(step - start_step, n_batches)


def _selection_identity(job: EpochJob) -> dict[str, Any]:
    return {"method": job.selection, "filter_ratio": job.filter_ratio, "n_chunks": job.n_chunks,
            "reference": file_sha256(job.reference_checkpoint)}


def _selected(job: EpochJob, learner: torch.nn.Module, reference: torch.nn.Module, super_batches: Iterator[Batch],
              first: int, rank: int, cfg: TrainConfig, flops_per_pair: int) -> Iterator[Batch]:
    """The selected batch of every super-batch; super-batch i (of the epoch) is drawn with seed
    (seed, epoch, rank, i), ``first`` the index of the first one given."""
    device = torch.device(cfg.device)
    for i, (images, tokens) in enumerate(super_batches, start=first):
        with autocast_for(device, cfg.precision):
            chosen = select(job.selection, learner, reference, images, tokens, job.batch_size,
                            seeded_generator(job.seed, job.epoch, rank, i), n_chunks=job.n_chunks,
                            flops_per_pair=flops_per_pair).indices
        yield images[chosen], tokens[chosen]


def _scoring_metrics(job: EpochJob, super_batches: int, flops_per_pair: int) -> dict[str, int]:
    """Samples scored and scoring FLOPs of the epoch (``super_batches`` over all ranks) and since epoch 1."""
    scored = super_batches * job.loader_batch_size
    before = read_checkpoint(checkpoint_file(job.previous_checkpoint))["extra"] if job.previous_checkpoint else {}
    return {"samples_scored": scored, "scoring_flops": scored * flops_per_pair,
            "samples_scored_total": before.get("samples_scored_total", 0) + scored,
            "scoring_flops_total": before.get("scoring_flops_total", 0) + scored * flops_per_pair}


def _ranks_in_sync(model: torch.nn.Module) -> bool:
    """DDP sanity check: every rank ends the epoch with the same weights (checksum min == max)."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1).cpu()
    lo, hi = checksum.clone(), checksum.clone()
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


def _initial_samples(job: EpochJob) -> int:
    return read_checkpoint(checkpoint_file(job.previous_checkpoint))["samples_seen"] if job.previous_checkpoint else 0


def main(argv: list[str] | None = None) -> int:
    """torchrun entry point: ``python -m dynamics_assets.core.train.epoch job.json [metrics.json]``."""
    argv = sys.argv[1:] if argv is None else argv
    job = EpochJob.from_json(argv[0])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if resolve_device(job.device).startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    try:
        metrics = run_epoch(job)
        if rank_world()[0] == 0 and len(argv) > 1:
            Path(argv[1]).write_text(json.dumps(metrics, indent=2))
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
