"""Divide and Contrast (DnC): experts on super-clusters of the current model, distilled into one.

Paper: Tian, Hénaff, van den Oord, "Divide and Contrast: Self-supervised Learning from Uncurated
Data" (ICCV 2021). A base model is trained on all data; its features are clustered into K
super-clusters (k-means); one expert per super-cluster, initialised from the base, is trained on
that super-cluster's data alone (its negatives come from the same region, so they are hard); base
and experts are distilled into one student with the contrastive loss plus a regression of the
student's features onto the teachers'.

Here, for CLIP (training setting ``dnc_experts = K``; a recipe's epoch partitions map to phases):

  epoch 1   base: an ordinary epoch on the plan (``train.epoch``).
  epoch 2   divide: embed the plan's unique samples' images with the base (f = normalised
            ``encode_image``), spherical k-means (faiss, ``seed``) into K super-clusters with unit
            centroids μ_k; expert k = the base (weights, AdamW state) trained on the plan entries of
            super-cluster k only (with their multiplicities), continuing the run's cosine schedule
            from the base's global step. Σ_k samples of expert k = the plan's size: one epoch's worth.
            Written next to the epoch's ``checkpoint.pt`` (= the base, unchanged, so the eval of
            epoch 2 evaluates the base): ``dnc-expert-<k>.pt`` (open_clip checkpoints) and
            ``dnc-super-clusters.npz`` (sample indices, their super-cluster, the centroids).
            The checkpoint's global step is advanced by one epoch's steps, so the student continues
            the schedule where a plain run's epoch 3 would.
  epoch ≥ 3 contrast/distil: the student, initialised from the base, trains on the plan with
            L = CLIP(x, y) + λ · ½ Σ_{t ∈ {base, expert k(i)}} [ (1 − cos(x_i, x_i^t)) + (1 − cos(y_i, y_i^t)) ] / 2
            averaged over the batch, x / y the student's image / text features of pair i, x^t / y^t
            the frozen teacher's, k(i) = argmax_k ⟨f_base(image_i), μ_k⟩ (the base's super-cluster
            of the sample, computed on the fly, so any plan works), λ = ``dnc_weight``.
            ``checkpoint.pt`` = the student (a normal open_clip checkpoint).

Compute, all counted: ``samples_seen`` includes every expert's training samples (epoch 2) and the
student's; ``device_seconds`` is the whole phase (embedding, k-means, experts; teachers' forwards);
``scoring_flops`` = the base's image-encoder forward FLOPs × samples embedded (epoch 2) and the
teachers' forward FLOPs (base + one expert, image + text) × samples distilled (epoch ≥ 3).
The paper's student regresses with one prediction head per teacher; here the student's own
features regress onto both teachers (no heads). One process only (no DDP); an interrupted DnC epoch
restarts from its beginning (no step checkpoints; ordinary epochs still resume).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from dynamics_assets.core.ingest.pool import collate
from dynamics_assets.core.model.clip import autocast_for, create_model, read_checkpoint, save_checkpoint
from dynamics_assets.core.model.flops import forward_flops, forward_flops_per_pair
from dynamics_assets.core.sample import read_plan
from dynamics_assets.core.train.job import (CHECKPOINT_NAME, EpochJob, checkpoint_extra, checkpoint_file, rank_world,
                                            steps_per_epoch, train_config)
from dynamics_assets.core.train.loader import PairBatches
from dynamics_assets.core.train.loop import TrainState, train_steps

EXPERT_NAME = "dnc-expert-{k}.pt"
SUPER_CLUSTERS_NAME = "dnc-super-clusters.npz"
EMBED_BATCH = 256

__all__ = ["EXPERT_NAME", "SUPER_CLUSTERS_NAME", "run_phase", "super_clusters", "distillation_loss"]


def run_phase(job: "EpochJob", work_dir: Path, *, on_step: Callable[[int, dict[str, float]], None] | None = None,
              ) -> dict[str, Any]:
    """Epoch ``job.epoch`` (≥ 2) of a DnC recipe; writes ``checkpoint.pt`` (and for epoch 2 the
    experts) into ``work_dir`` and returns the epoch's metrics (as ``epoch._run_epoch``, which calls it)."""
    if rank_world()[1] != 1:
        raise ValueError("divide_contrast trains in one process (world size 1)")
    if job.epoch < 2 or not job.previous_checkpoint:
        raise ValueError("divide_contrast phases start at epoch 2, from the base's checkpoint")
    if job.epoch == 2:
        return _divide(job, work_dir, on_step)
    return _distil(job, work_dir, on_step)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _load(job: "EpochJob", path: str | Path, device: str) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    ckpt = read_checkpoint(path)
    model, _, preprocess = create_model(job.model_name, None, torch.device(device), seed=job.seed)
    model.load_state_dict(ckpt["state_dict"])
    return model, preprocess, ckpt


def _collate_fn(job: "EpochJob", preprocess) -> Callable:
    import open_clip

    tokenizer = open_clip.get_tokenizer(job.model_name)
    return lambda pairs: collate(pairs, preprocess=preprocess, tokenizer=tokenizer)


def _indexed_batches(batches: PairBatches, collate_fn: Callable) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """(sample indices, images, tokens) of every batch of a pass (decoded in this process)."""
    for pairs in batches.batches():
        images, tokens = collate_fn(pairs)
        yield np.fromiter((p.sample_index for p in pairs), dtype=np.int64, count=len(pairs)), images, tokens


def _image_features(model: torch.nn.Module, images: torch.Tensor, device: str, precision: str) -> torch.Tensor:
    with torch.no_grad(), autocast_for(torch.device(device), precision):
        return torch.nn.functional.normalize(model.encode_image(images.to(device)).float(), dim=-1)


def _image_flops(model: torch.nn.Module) -> int:
    """Forward FLOPs of one image through ``model``'s image encoder."""
    import open_clip

    return forward_flops(model, open_clip.get_model_preprocess_cfg(model)["size"],
                         open_clip.get_model_tokenize_cfg(model)["context_length"], towers=("image",))


def _pair_flops(model: torch.nn.Module) -> int:
    import open_clip

    return forward_flops_per_pair(model, open_clip.get_model_preprocess_cfg(model)["size"],
                                  open_clip.get_model_tokenize_cfg(model)["context_length"])


def super_clusters(features: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (faiss) of unit ``features`` (N, D) into ``k``: (assignment (N,), centroids (k, D))."""
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32)
    if len(x) < k:
        raise ValueError(f"divide_contrast: {len(x)} samples cannot form {k} super-clusters")
    kmeans = faiss.Kmeans(x.shape[1], k, niter=20, spherical=True, seed=seed, verbose=False, max_points_per_centroid=100000)
    kmeans.train(x)
    centroids = kmeans.centroids / np.linalg.norm(kmeans.centroids, axis=1, keepdims=True)
    return np.argmax(x @ centroids.T, axis=1).astype(np.int64), centroids.astype(np.float32)


def _start(job: "EpochJob") -> tuple[float, str, str, Any, torch.nn.Module, Any, dict[str, Any]]:
    """(start time, device, precision, plan, the previous checkpoint's model, its preprocess, the
    checkpoint): what both phases begin with."""
    from dynamics_assets.core.model.devices import resolve_device, resolve_precision

    started = time.perf_counter()
    device = resolve_device(job.device)
    model, preprocess, ckpt = _load(job, checkpoint_file(job.previous_checkpoint), device)
    return started, device, resolve_precision(job.precision, device), read_plan(job.plan_dir), model, preprocess, ckpt


def _metrics(job: "EpochJob", started: float, *, device: str, state: TrainState, before: int,
             scoring_flops: int, previous_extra: dict[str, Any], steps: int, **extra: Any) -> dict[str, Any]:
    seconds = time.perf_counter() - started
    return {"ranks_in_sync": True, "epoch": job.epoch, "steps": steps, "global_step": state.step,
            "samples_seen": state.samples_seen, "epoch_samples": state.samples_seen - before,
            "final_loss": state.last_loss, "seconds": seconds, "device": device, "world_size": 1,
            "device_seconds": seconds, "resumed_at_step": 0, "precision": job.precision, "scoring_flops": scoring_flops,
            "scoring_flops_total": int(previous_extra.get("scoring_flops_total", 0)) + scoring_flops, **extra}


def _save(job: "EpochJob", work_dir: Path, model: torch.nn.Module, state: TrainState, metrics: dict[str, Any],
          optimizer: dict[str, Any], **lists: list[int]) -> dict[str, Any]:
    """``checkpoint.pt`` of the phase (its metrics, with ``lists``, in the checkpoint's extra); the metrics."""
    metrics.update(lists)
    save_checkpoint(work_dir / CHECKPOINT_NAME, model, model_name=job.model_name, epoch=job.epoch, step=state.step,
                    samples_seen=state.samples_seen, optimizer=optimizer,
                    extra=checkpoint_extra(job, metrics, state.last_loss, **lists))
    return metrics


# ---------------------------------------------------------------------------------------------
# epoch 2: divide
# ---------------------------------------------------------------------------------------------

def _divide(job: "EpochJob", work_dir: Path, on_step) -> dict[str, Any]:
    started, device, precision, plan, base, preprocess, ckpt = _start(job)
    collate_fn = _collate_fn(job, preprocess)
    base.eval()

    # 1. the base's image features of the plan's unique samples
    embed = PairBatches(Path(job.manifest_dir), Path(job.shards_dir), (job.seed, job.epoch, 0, 1), EMBED_BATCH,
                        job.buffer_size, indices=plan.indices, counts=np.ones(len(plan.indices), np.uint16), keep_last=True)
    ids, feats = [], []
    for index, images, _ in _indexed_batches(embed, collate_fn):
        ids.append(index)
        feats.append(_image_features(base, images, device, precision).cpu().numpy())
    ids, feats = np.concatenate(ids), np.concatenate(feats)
    order = np.argsort(ids, kind="stable")
    ids, feats = ids[order], feats[order]
    if not np.array_equal(ids, np.asarray(plan.indices, dtype=np.int64)):
        raise RuntimeError("divide_contrast: the embedded samples are not the plan's")
    embed_flops = len(ids) * _image_flops(base)

    # 2. K super-clusters
    assign, centroids = super_clusters(feats, job.dnc_experts, job.seed)
    np.savez(work_dir / SUPER_CLUSTERS_NAME, indices=ids, super_cluster=assign, centroids=centroids)

    # 3. one expert per super-cluster, from the base, on its samples only
    cfg = train_config(job, plan.size, 1, device)
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    expert_samples, final_losses = [], []
    for k in range(job.dnc_experts):
        mask = assign == k
        expert = copy.deepcopy(base)
        expert.load_state_dict(base_state)
        batches = PairBatches(Path(job.manifest_dir), Path(job.shards_dir), (job.seed, job.epoch, 0, 2, k),
                              job.batch_size, job.buffer_size, indices=plan.indices[mask],
                              counts=plan.multiplicity[mask], keep_last=True)
        state = TrainState(step=ckpt["step"], optimizer=copy.deepcopy(ckpt["optimizer"]))
        state = train_steps(expert, (b for _, *b in _indexed_batches(batches, collate_fn)), cfg, state=state,
                            model_name=job.model_name, on_step=on_step, progress=lambda *_: None)
        expert_samples.append(state.samples_seen)
        final_losses.append(state.last_loss)
        save_checkpoint(work_dir / EXPERT_NAME.format(k=k), expert, model_name=job.model_name, epoch=job.epoch,
                        step=state.step, samples_seen=state.samples_seen,
                        extra={"super_cluster": k, "n_samples": int(mask.sum()), "last_loss": state.last_loss})
        del expert

    # 4. checkpoint.pt = the base; the schedule advanced by one epoch; every expert sample counted
    before = int(ckpt["samples_seen"])
    samples_seen = before + int(sum(expert_samples))
    steps = steps_per_epoch(plan.size, job.batch_size, 1)
    state = TrainState(step=int(ckpt["step"]) + steps, samples_seen=samples_seen,
                       last_loss=float(np.average(final_losses, weights=expert_samples)))
    metrics = _metrics(job, started, device=device, state=state, before=before, scoring_flops=embed_flops,
                       previous_extra=ckpt["extra"], steps=steps, dnc_phase="divide", dnc_samples_embedded=len(ids))
    return _save(job, work_dir, base, state, metrics, ckpt["optimizer"],
                 dnc_expert_samples=[int(s) for s in expert_samples])


# ---------------------------------------------------------------------------------------------
# epoch ≥ 3: distil
# ---------------------------------------------------------------------------------------------

def distillation_loss(student: tuple[torch.Tensor, torch.Tensor], teachers: list[tuple[torch.Tensor, torch.Tensor]]
                      ) -> torch.Tensor:
    """Mean over teachers and the batch of ½[(1 − cos(x, x^t)) + (1 − cos(y, y^t))]."""
    x, y = student
    cos = torch.nn.functional.cosine_similarity
    terms = [((1 - cos(x, xt.detach(), dim=-1)) + (1 - cos(y, yt.detach(), dim=-1))) / 2 for xt, yt in teachers]
    return torch.stack(terms).mean()


def _experts_dir(job: "EpochJob", previous_extra: dict[str, Any]) -> Path:
    from dynamics_assets.core.io import versions

    recorded = previous_extra.get("dnc_experts_dir")  # checkpoints written before the ref existed
    here = checkpoint_file(job.previous_checkpoint).parent
    ref = None
    if versions.is_version_dir(here):  # a student's version refers to the epoch-2 version (its teachers)
        rec = versions.version_info(here).get("refs", {}).get("dnc_experts")
        ref = (here / rec["path"]).resolve() if rec else None
    for candidate in (here, ref, Path(recorded) if recorded else None):
        if candidate is not None and (candidate / SUPER_CLUSTERS_NAME).is_file():
            return candidate
    raise FileNotFoundError(f"divide_contrast: no experts next to {here} (nor at {str(ref) if ref else recorded!r}): "
                            "run epoch 2 first")


def _distil(job: "EpochJob", work_dir: Path, on_step) -> dict[str, Any]:
    started, device, precision, plan, student, preprocess, ckpt = _start(job)
    experts_dir = _experts_dir(job, ckpt["extra"])
    # the base (teacher) = the epoch-2 checkpoint (the base itself); a later epoch's previous is a student
    base = _load(job, experts_dir / CHECKPOINT_NAME, device)[0].eval()
    centroids = torch.from_numpy(np.load(experts_dir / SUPER_CLUSTERS_NAME)["centroids"]).to(device)
    experts = [_load(job, experts_dir / EXPERT_NAME.format(k=k), device)[0].eval() for k in range(len(centroids))]
    for teacher in (base, *experts):
        teacher.requires_grad_(False)
    counts = np.zeros(len(centroids), dtype=np.int64)

    def distil(images, tokens, x, y):
        """λ × the distillation term onto the base and the sample's expert (their forwards frozen)."""
        with torch.no_grad():
            bx, by = base.encode_image(images), base.encode_text(tokens)
            which = (torch.nn.functional.normalize(bx.float(), dim=-1) @ centroids.T).argmax(dim=1)
            ex, ey = torch.empty_like(bx), torch.empty_like(by)
            for k in which.unique().tolist():
                rows = which == k
                ex[rows] = experts[k].encode_image(images[rows]).to(ex.dtype)
                ey[rows] = experts[k].encode_text(tokens[rows]).to(ey.dtype)
        counts[:] += np.bincount(which.cpu().numpy(), minlength=len(centroids))
        term = distillation_loss((x.float(), y.float()), [(bx.float(), by.float()), (ex.float(), ey.float())])
        return job.dnc_weight * term, {"distil_loss": term.item()}

    batches = PairBatches(Path(job.manifest_dir), Path(job.shards_dir), (job.seed, job.epoch, 0), job.batch_size,
                          job.buffer_size, indices=plan.indices, counts=plan.multiplicity, keep_last=True)
    before = int(ckpt["samples_seen"])
    state = TrainState(step=int(ckpt["step"]), samples_seen=before, optimizer=ckpt["optimizer"])
    start_step = state.step
    state = train_steps(student, (b for _, *b in _indexed_batches(batches, _collate_fn(job, preprocess))),
                        train_config(job, plan.size, 1, device), state=state, model_name=job.model_name,
                        on_step=on_step, progress=lambda *_: None, extra_loss=distil)
    teacher_flops = 2 * _pair_flops(base)  # base + one expert, image + text, per pair
    metrics = _metrics(job, started, device=device, state=state, before=before,
                       scoring_flops=(state.samples_seen - before) * teacher_flops, previous_extra=ckpt["extra"],
                       steps=state.step - start_step, dnc_phase="distil", dnc_experts_dir=str(experts_dir))
    return _save(job, work_dir, student, state, metrics, state.optimizer, dnc_samples_per_expert=counts.tolist())
