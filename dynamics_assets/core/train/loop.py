"""CLIP training loop (open_clip's recipe) with step checkpoints that resume bit-identically.

Recipe, as in open_clip_train (main.py, train.py, scheduler.py):
  loss      ``open_clip.ClipLoss``: (CE(s·X·Yᵀ, I) + CE(s·Y·Xᵀ, I)) / 2 over normalised image and
            text features X, Y with learned scale s = exp(t), t clamped to [0, ln 100] after each step;
  optimiser AdamW(β = (0.9, 0.98), ε = 1e-6), no weight decay on gains, biases, embeddings and t;
  LR        linear warm-up lr·(s+1)/W for global step s < W, then 0.5·(1 + cos(π·(s−W)/(S−W)))·lr
            (``open_clip_train.scheduler.cosine_lr``); a function of the *global* step, so a later
            epoch continues the schedule; S = ``total_steps`` of the whole run;
  precision autocast (+ GradScaler for fp16) on CUDA only; fp32 on CPU; gradient L2-norm clipping.
Resume: a step checkpoint holds weights, optimiser, GradScaler, global step, samples seen and the
torch RNG state; the batch stream (``pairs.PairBatches``) is a function of (seed, batches consumed),
so a resumed run skips exactly the batches already trained on.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import open_clip
import torch
from open_clip_train.scheduler import cosine_lr

from dynamics_assets.core.model.devices import PRECISIONS, resolve_device, resolve_precision
from dynamics_assets.core.io.atomic import write_json
from dynamics_assets.core.ingest.manifest import pool_identity
from dynamics_assets.core.model.clip import autocast_for, create_model, read_checkpoint, save_checkpoint
from dynamics_assets.core.io.hashing import file_sha256
from dynamics_assets.core.io.progress import Progress, bar
from dynamics_assets.core.ingest.pool import Pair, collate, pool_shards
from dynamics_assets.core.train.loader import PairBatches, batch_loader
from dynamics_assets.core.train.settings import TrainSettings

REFERENCE_MODEL = "dynamics-tiny-32"
REFERENCE_EPOCHS = 2
MAX_LOGIT_SCALE = math.log(100)

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """One run's optimiser schedule; ``lr`` and ``weight_decay`` have no default: every caller
    derives them from ``train.settings.TrainSettings`` (``job.train_config``, ``train_reference_model``)."""

    lr: float
    weight_decay: float
    warmup_steps: int = 0
    total_steps: int = 1  # of the whole run (all epochs): the cosine schedule's length
    grad_clip_norm: float | None = 1.0
    batch_size: int = 256  # what the batch stream was built with (recorded in step checkpoints)
    precision: str = "fp32"  # 'fp32' | 'bf16' | 'fp16' (the latter two on CUDA only)
    device: str = "cpu"
    seed: int = 0
    checkpoint_every_steps: int = 0  # 0: no step checkpoints
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} not in {PRECISIONS}")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(f"need 0 <= warmup_steps ({self.warmup_steps}) < total_steps ({self.total_steps})")


@dataclass
class TrainState:
    step: int = 0  # global optimiser steps taken
    samples_seen: int = 0
    last_loss: float = float("nan")
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None  # torch CPU (and CUDA) generator states
    extra: dict[str, Any] = field(default_factory=dict)  # caller's data stored with step checkpoints


def _clip_loss() -> open_clip.ClipLoss:
    """CLIP's contrastive loss; under DDP over the global batch (features gathered with grad)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return open_clip.ClipLoss(local_loss=False, gather_with_grad=True, rank=torch.distributed.get_rank(),
                                  world_size=torch.distributed.get_world_size())
    return open_clip.ClipLoss()


def _no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    return param.ndim < 2 or any(k in name for k in ("bn", "ln", "bias", "logit_scale", "embedding"))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for n, p in named if _no_weight_decay(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not _no_weight_decay(n, p)], "weight_decay": cfg.weight_decay},
        ],
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        # one fused kernel per step instead of a dozen passes over every tensor: about 2× faster
        # steps for the small CLIPs on CPU (the token embedding dominates), deterministic as well
        fused=all(p.device.type in ("cpu", "cuda") for _, p in named) or None,
    )


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_step_checkpoint(
    path: Path, model: torch.nn.Module, optimizer, scaler, state: TrainState, cfg: TrainConfig, model_name: str
) -> None:
    save_checkpoint(
        path,
        model,
        model_name=model_name,
        epoch=0,  # a step checkpoint lies inside a pass; the caller's extra says which
        step=state.step,
        samples_seen=state.samples_seen,
        optimizer=optimizer,
        scheduler_state={"step": state.step, "warmup_steps": cfg.warmup_steps, "total_steps": cfg.total_steps},
        extra={"last_loss": state.last_loss, "scaler": scaler.state_dict(), "rng": _rng_state(),
               "config": asdict(cfg), "caller": state.extra},
    )


def load_train_state(
    path: str | os.PathLike, model: torch.nn.Module, *, expect_extra: dict[str, Any] | None = None
) -> TrainState | None:
    """Load a step checkpoint's weights into ``model`` and return the state to resume from;
    None (``model`` untouched) if ``expect_extra`` is given and differs from the stored one."""
    checkpoint = read_checkpoint(path)
    extra = checkpoint["extra"]
    if expect_extra is not None and extra["caller"] != expect_extra:
        return None
    model.load_state_dict(checkpoint["state_dict"])
    return TrainState(
        step=checkpoint["step"],
        samples_seen=checkpoint["samples_seen"],
        last_loss=extra["last_loss"],
        optimizer=checkpoint["optimizer"],
        scaler=extra["scaler"],
        rng=extra["rng"],
        extra=extra["caller"],
    )


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, core: torch.nn.Module,
                   optimizer: torch.optim.Optimizer, scaler: Any, grad_clip_norm: float | None) -> None:
    """Backward, optional gradient clipping, the (scaled) optimiser step, and CLIP's logit-scale
    clamp on ``core`` (the unwrapped model under DDP)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip_norm is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm, norm_type=2.0)
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        core.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def train_steps(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    cfg: TrainConfig,
    *,
    state: TrainState | None = None,
    step_checkpoint_path: str | os.PathLike | None = None,
    model_name: str = "",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    progress: Progress | None = None,
    on_example_losses: Callable[[torch.Tensor], None] | None = None,
    extra_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                         tuple[torch.Tensor, dict[str, float]]] | None = None,
) -> TrainState:
    """One optimiser step per ``(images, tokens)`` batch, continuing from ``state``.

    ``batches`` must be the stream *after* the ``state.step`` batches already trained on. Every
    ``cfg.checkpoint_every_steps`` steps the state is written atomically to
    ``step_checkpoint_path`` (an open_clip checkpoint named ``model_name``). ``progress`` is
    called with ``(global step, cfg.total_steps)`` after each step (default: ``io.progress.bar``).
    ``on_example_losses`` gets every batch's per-example CLIP losses (detached, float32, this
    process's batch: ``online_selection.per_example_softmax_losses``) — no extra forward pass.
    ``extra_loss(images, tokens, image_features, text_features)`` → ``(term, logs)``: a term added
    to the CLIP loss (e.g. Divide and Contrast's distillation), its figures added to ``on_step``'s;
    ``state.last_loss`` stays the CLIP loss.
    """
    device = torch.device(resolve_device(cfg.device))
    core = getattr(model, "module", model)  # the open_clip model inside a DDP wrapper
    state = state if state is not None else TrainState()
    if state.rng is not None:
        _set_rng_state(state.rng)
    else:
        torch.manual_seed(cfg.seed)
    model.to(device).train()
    optimizer = make_optimizer(core, cfg)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    precision = resolve_precision(cfg.precision, device.type)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    if state.scaler is not None:
        scaler.load_state_dict(state.scaler)
    set_lr = cosine_lr(optimizer, cfg.lr, cfg.warmup_steps, cfg.total_steps)
    loss_fn = _clip_loss()
    every = cfg.checkpoint_every_steps
    progress = progress if progress is not None else bar("train", "step")

    for images, tokens in batches:
        lr = set_lr(min(state.step, cfg.total_steps))
        images, tokens = images.to(device), tokens.to(device)
        extra_logs: dict[str, float] = {}
        with autocast_for(device, precision):
            image_features, text_features, logit_scale = model(images, tokens)[:3]
            loss = clip_loss = loss_fn(image_features, text_features, logit_scale)
            if extra_loss is not None:
                term, extra_logs = extra_loss(images, tokens, image_features, text_features)
                loss = clip_loss + term
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {state.step}")
        if on_example_losses is not None:
            with torch.no_grad():
                on_example_losses(_example_losses(image_features, text_features, logit_scale))
        optimizer_step(loss, model, core, optimizer, scaler, cfg.grad_clip_norm)
        state.step += 1
        state.samples_seen += len(images)
        state.last_loss = clip_loss.item()
        if step_checkpoint_path is not None and every and state.step % every == 0:
            _save_step_checkpoint(Path(step_checkpoint_path), core, optimizer, scaler, state, cfg, model_name)
        if on_step is not None:
            on_step(state.step, {"loss": state.last_loss, "lr": lr, "samples_seen": state.samples_seen,
                                 "logit_scale": logit_scale.item(), **extra_logs})
        if progress is not None:
            progress(state.step, cfg.total_steps)

    state.optimizer = optimizer.state_dict()
    state.scaler = scaler.state_dict()
    state.rng = _rng_state()
    return state


def _example_losses(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """ℓ_i = ½ [CE(s·x_i·Yᵀ, i) + CE(s·y_i·Xᵀ, i)] of the batch (the terms ``ClipLoss`` averages)."""
    logits = logit_scale.float() * image_features.detach().float() @ text_features.detach().float().T
    return ((-logits.log_softmax(dim=1).diagonal() - logits.log_softmax(dim=0).diagonal()) / 2).cpu()


def _batches_from(passes: Sequence[PairBatches], lengths: Sequence[int], step: int,
                  collate_fn: Callable[[list[Pair]], Batch], num_workers: int = 0) -> Iterator[Batch]:
    """The concatenated collated batches of ``passes`` from global batch ``step`` on (decoded in
    ``num_workers`` DataLoader workers; the same batches for every number)."""
    for batches, length in zip(passes, lengths):
        if step >= length:
            step -= length
            continue
        yield from batch_loader(batches, collate_fn, skip=step, num_workers=num_workers)
        step = 0


class UndecodableLog:
    """Pairs left out of a batch because their image does not decode, one JSON line each, appended
    by whichever process decodes (DataLoader workers included: single ``O_APPEND`` writes)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __call__(self, pair: Pair, reason: str) -> None:
        line = json.dumps({"sample_id": pair.sample_id, "index": int(pair.sample_index), "reason": reason}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def read(self) -> dict[str, str]:
        """sample_id → reason, each sample once (a resumed epoch may decode a batch twice)."""
        if not self.path.is_file():
            return {}
        return {r["sample_id"]: r["reason"] for r in map(json.loads, self.path.read_text().splitlines()) if r}


def train_reference_model(
    manifest_dir: str | os.PathLike,
    shards_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    settings: TrainSettings | None = None,
    epochs: int = REFERENCE_EPOCHS,
    device: str = "cpu",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    reuse: bool = True,
    num_workers: int = 0,
    progress: Progress | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a small open_clip model on every ok pair of the pool and write its checkpoint.

    The hyper-parameters are the training settings (``train.settings.TrainSettings``: model_name,
    lr, weight_decay, warmup_fraction, grad_clip_norm, batch_size, buffer_size, seed,
    checkpoint_every_steps), ``settings`` (default: ``TrainSettings()``) with ``overrides`` (setting
    names, e.g. ``batch_size=64``; an unknown one is refused) — the same settings and defaults as a
    recipe's epochs. Epoch e is a ``PairBatches`` pass seeded with (seed, e). Step checkpoints go to
    ``<out>.step<suffix>``; a rerun with the same arguments resumes from there. With ``reuse``, a
    finished checkpoint whose record (``<out>.json``) names the same arguments, the same pool
    (``pool_identity``) and the checkpoint's own hash is returned as it is (``"reused": True``):
    re-curating an unchanged pool keeps its encoder, hence its embeddings and clusters.
    ``num_workers``: DataLoader workers decoding the batches (the batches do not depend on it).
    """
    s = (settings or TrainSettings()).with_overrides(overrides, source="train_reference_model")
    model_name, batch_size, seed, lr, buffer_size = s.model_name, s.batch_size, s.seed, s.lr, s.buffer_size
    started = time.perf_counter()
    out_path = Path(out_path)
    step_path = out_path.with_name(f"{out_path.stem}.step{out_path.suffix}")
    passes = [
        PairBatches(Path(manifest_dir), Path(shards_dir), (seed, epoch), batch_size, buffer_size)
        for epoch in range(epochs)
    ]
    lengths = [p.num_batches() for p in passes]
    total_steps = sum(lengths)
    if total_steps == 0:
        raise ValueError(f"{manifest_dir}: fewer ok pairs than one batch of {batch_size}")
    cfg = TrainConfig(lr=lr, weight_decay=s.weight_decay, warmup_steps=warmup_steps(s.warmup_fraction, total_steps),
                      total_steps=total_steps, grad_clip_norm=s.grad_clip_norm, batch_size=batch_size,
                      device=device, seed=seed, checkpoint_every_steps=s.checkpoint_every_steps)
    n_pairs = sum(shard.n_ok for shard in pool_shards(manifest_dir))
    run = {"model_name": model_name, "epochs": epochs, "batch_size": batch_size, "seed": seed,
           "lr": lr, "buffer_size": buffer_size, "n_pairs": n_pairs, "total_steps": total_steps}
    # the settings that shape the weights beyond these, recorded (and matched for reuse) only when
    # they differ from the defaults, so a default run's record and checkpoint keep their bytes
    run |= {k: getattr(s, k) for k in _REFERENCE_RECORDED if getattr(s, k) != getattr(_DEFAULTS, k)}
    record_path = out_path.with_name(f"{out_path.name}.json")
    pool = pool_identity(manifest_dir)
    if reuse and (kept := _reusable(out_path, record_path, run, pool)) is not None:
        log.info("%s: trained on this pool with these arguments already; reused", out_path)
        return {**kept, "reused": True, "seconds": time.perf_counter() - started}
    record_path.unlink(missing_ok=True)

    model, _, preprocess = create_model(model_name, device=resolve_device(device), seed=seed)
    tokenizer = open_clip.get_tokenizer(model_name)
    state = TrainState(extra=run)
    if step_path.exists():
        resumed = load_train_state(step_path, model, expect_extra=run)
        if resumed is None:
            log.warning("%s belongs to another run: starting afresh", step_path)
        else:
            state = resumed
    resumed_from = state.step
    # A pool whose manifest read headers only (decode: header) may hold images that do not decode:
    # the reference model is the first step to decode every image; it leaves such pairs out of
    # their batch and records them (the embedding records them again, the assignment quarantines them).
    undecodable = UndecodableLog(out_path.with_name(f"{out_path.name}.undecodable.jsonl"))
    if resumed_from == 0:
        undecodable.path.unlink(missing_ok=True)
    batches = _batches_from(passes, lengths, state.step, functools.partial(
        collate, preprocess=preprocess, tokenizer=tokenizer, on_undecodable=undecodable), num_workers)
    state = train_steps(model, batches, cfg, state=state, step_checkpoint_path=step_path,
                        model_name=model_name, on_step=on_step,
                        progress=progress if progress is not None else bar("reference model", "step"))
    skipped = undecodable.read()
    if skipped:
        log.warning("%d image(s) of the pool do not decode and were left out of the reference model's batches "
                    "(first: %s); recorded in %s", len(skipped), next(iter(skipped)), undecodable.path)
    metrics = {"steps": state.step, "samples_seen": state.samples_seen, "final_loss": state.last_loss,
               "resumed_from_step": resumed_from, "seconds": time.perf_counter() - started,
               "undecodable_images": len(skipped), "config": asdict(cfg) | run}
    save_checkpoint(out_path, model, model_name=model_name, epoch=epochs, step=state.step,
                    samples_seen=state.samples_seen, extra={k: v for k, v in metrics.items() if k != "seconds"})
    step_path.unlink(missing_ok=True)
    write_json(record_path, {"run": run, "pool": pool, "checkpoint_sha256": file_sha256(out_path),
                             "metrics": {k: v for k, v in metrics.items() if k != "seconds"}})
    return {**metrics, "reused": False}


_DEFAULTS = TrainSettings()
_REFERENCE_RECORDED = ("weight_decay", "warmup_fraction", "grad_clip_norm")


def warmup_steps(warmup_fraction: float, total_steps: int) -> int:
    """The warm-up steps of a run of ``total_steps``: ⌊fraction × total⌋, below the total (the one
    rule of the recipes' epochs, ``job.train_config``, and the reference model)."""
    return min(total_steps - 1, int(warmup_fraction * total_steps))


def trained_record(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The record ``train_reference_model`` wrote beside ``checkpoint`` (``<checkpoint>.json``: the
    run's arguments, the pool, the metrics: steps, samples seen), checked against the checkpoint's
    hash; a missing, unreadable or mismatched record is refused, naming the file."""
    path = Path(f"{checkpoint}.json")
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: no readable training record beside {checkpoint} ({e})") from None
    if record.get("checkpoint_sha256") != file_sha256(checkpoint):
        raise ValueError(f"{path}: the record names another checkpoint than {checkpoint} (sha256 differs)")
    return record


def _reusable(out_path: Path, record_path: Path, run: dict[str, Any], pool: str) -> dict[str, Any] | None:
    """The recorded metrics of a finished checkpoint made by this run on this pool, else None."""
    if not (out_path.is_file() and record_path.is_file()):
        return None
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("run") != run or record.get("pool") != pool:
        return None
    if record.get("checkpoint_sha256") != file_sha256(out_path):
        return None
    return record.get("metrics")
