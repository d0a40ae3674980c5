"""Online batch selection with a reference model: JEST and ActiveCLIP learnability.

Each training step draws a super-batch of n = round(b / (1 − f)) candidate pairs, scores it with the
learner (the model being trained) and a fixed reference model (small, trained on curated data),
and trains on the b pairs chosen below. Filter ratio f = 0.8 by default (n = 5b).

Losses over unit-norm image / text features X, Y (n × d) of one model, with s its logit scale
(``exp(t)``, as open_clip's forward returns it) and b its logit bias:
  pairwise sigmoid (SigLIP, Zhai et al. 2023):  L_ij = −log σ(z_ij (s·x_i·y_j + b)),
      z_ii = +1, z_ij = −1 (i ≠ j). A softmax-trained CLIP model has no bias: it gets b = −log n,
      the log-odds that makes σ(b) ≈ 1/n the prior of a pair being positive when each row
      holds one positive among n candidates (a learned bias could not be consistent with an
      untrained softmax model; zero would weigh the n − 1 negatives as heavily as the positive);
  per-example softmax contrastive (CLIP):  ℓ_i = ½ [CE(s·x_i·Yᵀ, i) + CE(s·y_i·Xᵀ, i)];
      mean_i ℓ_i is open_clip's ``ClipLoss`` on the super-batch.

ActiveCLIP / ClassAct (Evans et al. 2023, "Bad students make great teachers: active learning
accelerates large-scale visual understanding", arXiv 2312.05328): learnability
s_i = ℓ_i(learner) − ℓ_i(reference); b examples drawn without replacement with P ∝ softmax(s).

JEST (Evans et al. 2024, "Data curation via joint example selection further accelerates multimodal
learning", arXiv 2406.17711, Algorithm 1): S = L(learner) − L(reference) (n × n); the learnability
of a sub-batch B is s(B) = Σ_{i,j∈B} S_ij. Blocked sampling in ``n_chunks`` = 16 chunks: chunk 1
∝ softmax(S_kk); every later chunk ∝ softmax over the candidates k ∉ C of
S_kk + Σ_{j∈C} (S_kj + S_jk) = s(C ∪ {k}) − s(C), C the examples of the earlier chunks. Chunk sizes
differ by at most one (the first b mod n_chunks chunks are one larger); with b < n_chunks every
chunk holds one example.

Sampling without replacement ∝ softmax(logits) is Gumbel-top-k (Kool et al. 2019, "Stochastic
beams and where to find them"): the top k of logits_i + g_i, g_i = −log(−log u_i), u_i uniform,
drawn in float64 from a seeded CPU ``torch.Generator`` (so the draws do not depend on the device).
Indices are returned in draw order.

Compute: scoring is one forward pass of the learner and one of the reference per candidate, so
scoring FLOPs = samples scored × (F_learner + F_reference), F = ``flops.forward_flops_per_pair``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from dynamics_assets.core.model.flops import forward_flops_per_pair
from dynamics_assets.core.model.clip import create_model, read_checkpoint
from dynamics_assets.core.train.settings import FILTER_RATIO, N_CHUNKS, SELECTION_METHODS as METHODS  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class Features:
    """One model's view of a super-batch: unit-norm features, logit scale s and bias (or None)."""

    image: torch.Tensor  # (n, d)
    text: torch.Tensor  # (n, d)
    logit_scale: torch.Tensor | float
    logit_bias: torch.Tensor | float | None = None

    def logits(self) -> torch.Tensor:
        """s·X·Yᵀ in float32 (row i: image i against every text)."""
        return self.logit_scale * self.image.float() @ self.text.float().T


@dataclass(frozen=True)
class Selection:
    indices: torch.Tensor  # (batch_size,) int64 on CPU: positions in the super-batch, in draw order
    samples_scored: int  # the super-batch size
    scoring_flops: int  # forward FLOPs of learner + reference on the super-batch


def super_batch_size(batch_size: int, filter_ratio: float = FILTER_RATIO) -> int:
    """Candidates scored per step: round(batch_size / (1 − filter_ratio))."""
    if not 0 <= filter_ratio < 1:
        raise ValueError(f"filter_ratio must be in [0, 1), got {filter_ratio}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return round(batch_size / (1 - filter_ratio))


def pairwise_sigmoid_losses(features: Features) -> torch.Tensor:
    """L_ij = −log σ(z_ij (s·x_i·y_j + b)) (n × n); b = −log n for a model without a bias."""
    logits = features.logits()
    n = logits.shape[0]
    bias = -math.log(n) if features.logit_bias is None else features.logit_bias
    signs = 2 * torch.eye(n, device=logits.device) - 1
    return F.softplus(-signs * (logits + bias))  # softplus(−v) = −log σ(v)


def per_example_softmax_losses(features: Features) -> torch.Tensor:
    """ℓ_i = ½ [CE(row i of s·X·Yᵀ, i) + CE(column i, i)] (n,)."""
    logits = features.logits()
    image_to_text = -logits.log_softmax(dim=1).diagonal()
    text_to_image = -logits.log_softmax(dim=0).diagonal()
    return (image_to_text + text_to_image) / 2


def jest_scores(learner: Features, reference: Features) -> torch.Tensor:
    """S = L(learner) − L(reference): pairwise learnability (n × n)."""
    return _finite(pairwise_sigmoid_losses(learner) - pairwise_sigmoid_losses(reference))


def activeclip_scores(learner: Features, reference: Features) -> torch.Tensor:
    """s_i = ℓ_i(learner) − ℓ_i(reference): per-example learnability (n,)."""
    return _finite(per_example_softmax_losses(learner) - per_example_softmax_losses(reference))


def _finite(scores: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(scores).all():
        raise FloatingPointError("non-finite learnability scores: a model's features or logit scale diverged")
    return scores


def subbatch_learnability(scores: torch.Tensor, indices: torch.Tensor) -> float:
    """s(B) = Σ_{i,j∈B} S_ij."""
    indices = indices.to(scores.device)
    return float(scores[indices][:, indices].sum())


def conditional_scores(scores: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """S_kk + Σ_{j∈C} (S_kj + S_jk) for every k: the gain s(C ∪ {k}) − s(C) for k ∉ C."""
    chosen = chosen.to(scores.device)
    return scores.diagonal() + scores[:, chosen].sum(dim=1) + scores[chosen, :].sum(dim=0)


def gumbel_top_k(logits: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k distinct indices of ``logits`` drawn without replacement with P ∝ softmax(logits)."""
    if not 0 <= k <= logits.numel():
        raise ValueError(f"cannot draw {k} of {logits.numel()} candidates")
    uniform = torch.rand(logits.numel(), generator=generator, dtype=torch.float64)
    keys = logits.detach().double().cpu() - torch.log(-torch.log(uniform))
    return torch.topk(keys, k).indices


def chunk_sizes(batch_size: int, n_chunks: int) -> list[int]:
    """``batch_size`` split into min(n_chunks, batch_size) chunks whose sizes differ by at most one."""
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    count = min(n_chunks, batch_size)
    base, extra = divmod(batch_size, count)
    return [base + (i < extra) for i in range(count)]


def jest_sample(scores: torch.Tensor, batch_size: int, generator: torch.Generator,
                n_chunks: int = N_CHUNKS) -> torch.Tensor:
    """JEST's blocked sampling of ``batch_size`` of the n candidates of the n × n score matrix."""
    n = scores.shape[0]
    if scores.shape != (n, n):
        raise ValueError(f"scores must be square, got {tuple(scores.shape)}")
    chosen = torch.empty(0, dtype=torch.long)
    available = torch.ones(n, dtype=torch.bool)
    for size in chunk_sizes(batch_size, n_chunks):
        candidates = available.nonzero().squeeze(1)
        gain = conditional_scores(scores, chosen).cpu()[candidates]
        drawn = candidates[gumbel_top_k(gain, size, generator)]
        chosen = torch.cat([chosen, drawn])
        available[drawn] = False
    return chosen


def select_from_features(method: str, learner: Features, reference: Features, batch_size: int,
                         generator: torch.Generator, *, n_chunks: int = N_CHUNKS) -> torch.Tensor:
    """Indices of the ``batch_size`` pairs chosen by ``method`` from the scored super-batch."""
    n = learner.image.shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"cannot select {batch_size} of a super-batch of {n}")
    if method == "jest":
        return jest_sample(jest_scores(learner, reference), batch_size, generator, n_chunks)
    if method == "activeclip":
        return gumbel_top_k(activeclip_scores(learner, reference), batch_size, generator)
    raise ValueError(f"unknown selection method {method!r}; known: {METHODS}")


@torch.no_grad()
def model_features(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> Features:
    """An open_clip model's features of a batch, in eval mode (its train/eval mode is restored)."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        out = model(images.to(device), tokens.to(device))
    finally:
        model.train(was_training)
    bias = out[3].float() if len(out) > 3 else None
    return Features(out[0].float(), out[1].float(), out[2].float(), bias)


def scoring_flops_per_pair(learner: torch.nn.Module, reference: torch.nn.Module) -> int:
    """Forward FLOPs of one pair through learner and reference, at the learner's input size."""
    image_size = open_clip.get_model_preprocess_cfg(learner)["size"]
    context_length = open_clip.get_model_tokenize_cfg(learner)["context_length"]
    return sum(_counted_forward_flops(m, image_size, context_length) for m in (learner, reference))


def _counted_forward_flops(model: torch.nn.Module, image_size: int | tuple[int, int], context_length: int) -> int:
    """``forward_flops_per_pair`` measured in train mode: in eval mode under inference, torch's fused
    ``nn.MultiheadAttention`` fast path hides the attention projections from ``FlopCounterMode``."""
    was_training = model.training
    model.train()
    try:
        return forward_flops_per_pair(model, image_size, context_length)
    finally:
        model.train(was_training)


def check_same_inputs(learner: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Raise ``ValueError`` unless the reference takes the learner's images and tokens."""
    for what, cfg in (("preprocessing", open_clip.get_model_preprocess_cfg),
                      ("tokenizer", open_clip.get_model_tokenize_cfg)):
        if cfg(learner) != cfg(reference):
            raise ValueError(f"reference model {what} {cfg(reference)} differs from the learner's {cfg(learner)}")


def load_reference_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The frozen reference model of an open_clip checkpoint (its model name in ``"name"``)."""
    checkpoint = read_checkpoint(path)
    if not checkpoint.get("name") or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not an open_clip checkpoint with a model 'name' and a 'state_dict'")
    model, _, _ = create_model(checkpoint["name"], None, device)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval().requires_grad_(False)


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from an integer key, e.g. (seed, epoch, rank, step)."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def select(method: str, learner: torch.nn.Module, reference: torch.nn.Module, images: torch.Tensor,
           tokens: torch.Tensor, batch_size: int, generator: torch.Generator, *, n_chunks: int = N_CHUNKS,
           flops_per_pair: int | None = None) -> Selection:
    """Score the super-batch ``(images, tokens)`` with both models (no grad) and choose ``batch_size``.

    ``flops_per_pair``: ``scoring_flops_per_pair(learner, reference)``, measured when not given.
    Call under the training autocast to score in reduced precision on CUDA.
    """
    if flops_per_pair is None:
        flops_per_pair = scoring_flops_per_pair(learner, reference)
    indices = select_from_features(method, model_features(learner, images, tokens),
                                   model_features(reference, images, tokens), batch_size, generator,
                                   n_chunks=n_chunks)
    n = images.shape[0]
    return Selection(indices, n, n * flops_per_pair)
