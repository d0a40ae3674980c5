"""Locked-image text tuning (LiT): the comparison's learner, a CLIP whose image tower is frozen.

Formula (Zhai et al., "LiT: Zero-Shot Transfer with Locked-image text Tuning", CVPR 2022):
  image  u = normalise(W · LayerNorm(f(x)))         f = a frozen pretrained trunk (``embed.frozen``),
                                                     cached once per image; W learns
  text   v = normalise(TextTransformer(tokens(t)))  open_clip's text tower, trained from scratch
  loss   open_clip's ``ClipLoss``: (CE(s·U·Vᵀ, I) + CE(s·V·Uᵀ, I)) / 2, s = exp(t), t clamped to [0, ln 100]
  optimiser AdamW(β = (0.9, 0.98), ε = 1e-6), weight decay on matrices only; LR: linear warm-up then
  cosine (``open_clip_train.scheduler.cosine_lr``) over the run's total steps.
Zero-shot: class c's text embedding is the normalised mean of its prompt templates' embeddings; an
image is classified by the largest cosine. Because the image trunk never changes, a run costs only
the head and the text tower per step, so a 2-core machine trains ~10× more optimiser steps than the
full ViT learner in the same time, and the learner reaches a useful accuracy (what the comparison
needs to be able to see a curation effect).

Everything a run does is a function of (features, tokens, plans, settings, seed): the batches are a
seeded shuffle of each epoch's plan (each index repeated by its multiplicity), the initialisation is
seeded; one thread gives bit-identical results on CPU.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

LIT_VERSION = 1


@dataclass(frozen=True)
class LitSettings:
    embed_dim: int = 128
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 32
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    grad_clip_norm: float = 1.0

    def as_dict(self) -> dict:
        return {**asdict(self), "version": LIT_VERSION}


def build_model(feature_dim: int, s: LitSettings, seed: int):
    import torch
    from open_clip.transformer import TextTransformer

    torch.manual_seed(seed)

    class LitModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.image_head = torch.nn.Sequential(torch.nn.LayerNorm(feature_dim),
                                                  torch.nn.Linear(feature_dim, s.embed_dim))
            self.text = TextTransformer(context_length=s.context_length, width=s.text_width, heads=s.text_heads,
                                        layers=s.text_layers, output_dim=s.embed_dim)
            self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        def encode_image(self, feats):
            return torch.nn.functional.normalize(self.image_head(feats), dim=-1)

        def encode_text(self, tokens):
            return torch.nn.functional.normalize(self.text(tokens), dim=-1)

    return LitModel()


def tokenize(texts: Sequence[str], context_length: int) -> np.ndarray:
    import open_clip
    return open_clip.tokenize(list(texts), context_length=context_length).numpy().astype(np.int32)


def epoch_order(indices: np.ndarray, multiplicity: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The epoch's sample sequence: every plan index repeated by its multiplicity, shuffled (seeded)."""
    seq = np.repeat(np.asarray(indices, dtype=np.int64), np.asarray(multiplicity, dtype=np.int64))
    rng = np.random.default_rng([seed, epoch, 0x117])
    return seq[rng.permutation(len(seq))]


def steps_of(plan_sizes: Sequence[int], batch: int) -> int:
    return sum(n // batch if n >= batch else (1 if n >= 2 else 0) for n in plan_sizes)


def _batches(seq: np.ndarray, batch: int):
    if len(seq) < batch:
        if len(seq) >= 2:
            yield seq
        return
    for start in range(0, len(seq) - batch + 1, batch):  # whole batches (open_clip_train drops the rest)
        yield seq[start:start + batch]


@dataclass
class LitRun:
    correct: np.ndarray  # (eval images,) 1.0 / 0.0 zero-shot top-1 correctness
    steps: int
    samples_seen: int
    distinct_seen: int
    seconds: float
    final_loss: float


def class_embeddings(model, class_tokens: np.ndarray):
    """(C, D) normalised class embeddings from (C, T, ctx) prompt tokens (template mean)."""
    import torch
    C, T, L = class_tokens.shape
    with torch.no_grad():
        v = model.encode_text(torch.from_numpy(class_tokens.reshape(C * T, L)).long()).view(C, T, -1).mean(1)
        return torch.nn.functional.normalize(v, dim=-1)


def zero_shot_correct(model, eval_features: np.ndarray, eval_labels: np.ndarray, class_tokens: np.ndarray) -> np.ndarray:
    import torch
    cls = class_embeddings(model, class_tokens)
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(np.asarray(eval_features, np.float32)))
        pred = (img @ cls.T).argmax(dim=1).numpy()
    return (pred == np.asarray(eval_labels)).astype(np.float32)


def train_lit(features: np.ndarray, tokens: np.ndarray, plans: Sequence[tuple[np.ndarray, np.ndarray]],
              eval_features: np.ndarray, eval_labels: np.ndarray, class_tokens: np.ndarray,
              settings: LitSettings, seed: int, device: str = "cpu") -> LitRun:
    """Train on ``plans`` (one (indices, multiplicity) per epoch, indices into ``features``/``tokens``)
    and return the zero-shot correctness on the evaluation features. On a GPU (``device="cuda"``) the
    whole pool's features and tokens are copied to the device once (≈ 65 MB for 25k pairs) and each
    batch is gathered there: the locked features are the pool pre-decoded on the GPU."""
    import torch
    from open_clip.loss import ClipLoss
    from open_clip_train.scheduler import cosine_lr

    started = time.perf_counter()
    model = build_model(features.shape[1], settings, seed).to(device)
    on_device = device != "cpu"
    if on_device:
        all_feats = torch.from_numpy(np.asarray(features, dtype=np.float32)).to(device)
        all_toks = torch.from_numpy(np.asarray(tokens)).long().to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.98), eps=1e-6)
    sizes = [int(np.asarray(m, np.int64).sum()) for _, m in plans]
    total = max(1, steps_of(sizes, settings.batch_size))
    schedule = cosine_lr(opt, settings.lr, min(settings.warmup_steps, total - 1), total)
    loss_fn = ClipLoss()
    step, seen, loss_value = 0, 0, float("nan")
    distinct = np.zeros(len(features), dtype=bool)
    model.train()
    for epoch, (indices, mult) in enumerate(plans):
        distinct[np.asarray(indices, dtype=np.int64)] = True
        for batch in _batches(epoch_order(indices, mult, seed, epoch), settings.batch_size):
            schedule(step)
            order = np.sort(batch)  # memmap reads in file order; the pairing is kept
            if on_device:
                at = torch.from_numpy(order).to(device)
                feats, toks = all_feats[at], all_toks[at]
            else:
                feats = torch.from_numpy(np.asarray(features[order], dtype=np.float32))
                toks = torch.from_numpy(np.asarray(tokens[order])).long()
            loss = loss_fn(model.encode_image(feats), model.encode_text(toks), model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip_norm)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step, seen = step + 1, seen + len(batch)
            last = loss.detach()
    loss_value = float(last) if step else float("nan")
    model.eval().to("cpu")
    correct = zero_shot_correct(model, eval_features, eval_labels, class_tokens)
    return LitRun(correct, step, seen, int(distinct.sum()), time.perf_counter() - started, loss_value)


def flops_per_sample(feature_dim: int, settings: LitSettings) -> int:
    """Learner FLOPs (forward + backward) per training sample, counted by torch's FlopCounterMode on
    one batch (the loss included)."""
    import torch
    from open_clip.loss import ClipLoss
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(feature_dim, settings, 0)
    b = 16
    feats = torch.zeros(b, feature_dim)
    toks = torch.ones(b, settings.context_length, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        loss = ClipLoss()(model.encode_image(feats), model.encode_text(toks), model.logit_scale.exp())
        loss.backward()
    return int(counter.get_total_flops() // b)
