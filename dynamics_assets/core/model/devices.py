"""Resolve where compute runs: 'auto' | 'cuda' | 'cuda:N' | 'cpu', with an explicit CPU fallback."""
from __future__ import annotations

import torch

from dynamics_assets.core.model.spec import PRECISIONS


class GpuUnavailableError(RuntimeError):
    pass


def resolve_device(requested: str = "auto", *, allow_cpu_fallback: bool = True) -> str:
    """'auto' takes the GPU when there is one; 'cuda' without a GPU is an error unless the
    caller allows the CPU fallback."""
    requested = requested.lower()
    if requested == "cpu":
        return "cpu"
    if not (requested == "auto" or requested.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {requested!r}")
    if torch.cuda.is_available():
        return "cuda" if requested == "auto" else requested
    if requested == "auto" or allow_cpu_fallback:
        return "cpu"
    raise GpuUnavailableError(
        f"device {requested!r} was requested but torch sees no GPU "
        f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); "
        "set allow_cpu_fallback=true to run on the CPU instead")


def resolve_precision(precision: str, device: str) -> str:
    """Mixed precision only on CUDA; the CPU runs fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    return precision if device.startswith("cuda") else "fp32"
