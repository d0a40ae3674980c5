"""Invariants of a training checkpoint: loads safely (weights only), finite weights and loss."""
from __future__ import annotations

import math
from pathlib import Path


from dynamics_assets.core.io.findings import Findings
import torch

from dynamics_assets.core.model.clip import create_model, read_checkpoint


def checkpoint_findings(path: str | Path, model_name: str) -> Findings:
    """Loads with ``torch.load(weights_only=True)`` and into open_clip; finite weights and
    finite ``extra.last_loss``."""
    f = Findings()
    try:
        ckpt = read_checkpoint(path)
    except Exception as e:  # noqa: BLE001 — any failure to load is the finding itself
        f.error("unloadable", 1, [f"{path}: torch.load(weights_only=True): {e!r}"[:500]])
        return f
    state = ckpt.get("state_dict", {})
    non_finite = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    f.error("non_finite_weights", len(non_finite), non_finite)
    loss = ckpt.get("extra", {}).get("last_loss")
    finite_loss = isinstance(loss, (int, float)) and math.isfinite(loss)
    f.require(finite_loss, "last_loss_not_finite", f"{path}: extra.last_loss = {loss!r}")
    try:
        create_model(model_name, str(path))
    except Exception as e:  # noqa: BLE001 — open_clip rejecting the file is the finding itself
        f.error("open_clip_rejects", 1, [f"{path} as {model_name}: {e!r}"[:500]])
    f.facts.update(tensors=len(state), last_loss=float(loss) if finite_loss else repr(loss),
                   epoch=int(ckpt.get("epoch", -1)), samples_seen=int(ckpt.get("samples_seen", -1)))
    return f

