"""Compute accounting for CLIP training: measured forward FLOPs per image–text pair.

``forward_flops`` runs ``encode_image`` on a ``(B, 3, H, W)`` dummy batch and ``encode_text`` on a
``(B, context_length)`` dummy token batch under ``torch.utils.flop_counter.FlopCounterMode``, which
counts matrix multiplications, convolutions and attention (2 FLOPs per multiply–add); elementwise
ops, norms and softmax are not counted (a few percent for transformers).

Training compute is estimated as ``train_flops = 3 × forward_flops_per_pair × samples_seen``: the
backward pass costs about twice the forward (gradients with respect to activations and to weights),
the usual estimate behind ``C ≈ 6·N·D`` (Kaplan et al. 2020, "Scaling Laws for Neural Language
Models", forward ≈ 2·N per token). The contrastive loss's ``B × B`` similarity matrix (``O(B·D)``
per pair) is left out: it is negligible next to the encoders.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["forward_flops", "forward_flops_per_pair", "train_flops"]

BACKWARD_FORWARD_RATIO = 2  # backward ≈ 2 × forward


def forward_flops(model: torch.nn.Module, image_size: int | tuple[int, int], context_length: int, *,
                  batch_size: int = 1, towers: tuple[str, ...] = ("image", "text")) -> int:
    """FLOPs of one forward pass of ``batch_size`` image–text pairs through ``towers`` (default
    both encoders; ``("image",)`` for an image-only pass)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    parameter = next(model.parameters())
    images = torch.zeros(batch_size, 3, height, width, device=parameter.device, dtype=parameter.dtype)
    tokens = torch.zeros(batch_size, context_length, device=parameter.device, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    # Count in train mode: in eval mode torch's fused attention fast path hides the attention
    # projections from the counter (about 22% of the tiny model's FLOPs go missing).
    was_training = model.training
    model.train()
    try:
        with torch.no_grad(), counter:
            if "image" in towers:
                model.encode_image(images)
            if "text" in towers:
                model.encode_text(tokens)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def forward_flops_per_pair(model: torch.nn.Module, image_size: int | tuple[int, int], context_length: int) -> int:
    """Forward FLOPs of a single image–text pair."""
    return forward_flops(model, image_size, context_length, batch_size=1)


def train_flops(samples_seen: int, flops_per_pair: int) -> int:
    """Training FLOPs ≈ (1 + 2) × forward FLOPs per pair × pairs seen (forward + backward)."""
    return (1 + BACKWARD_FORWARD_RATIO) * flops_per_pair * samples_seen
