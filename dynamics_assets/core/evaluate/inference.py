"""Running an encoder for evaluation (torch): eval mode under ``inference_mode``, the dtype its
inputs take, and L2-normalised float32 CPU features. Shared by the eval report (``report``) and
the held-out retrieval (``holdout``)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["inference", "model_dtype", "normalised"]


@contextlib.contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and ``inference_mode`` for the block; the model's training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's parameters (what its image inputs are cast to)."""
    return next(model.parameters()).dtype


def normalised(features: torch.Tensor) -> torch.Tensor:
    """L2-normalised float32 features on the CPU."""
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu()
