"""open_clip encoders: the project's model configs, encoder specs, loading and checkpoints.

* The JSON configs in ``model_configs/`` (e.g. ``dynamics-tiny-32``: ViT 32 px / patch 4, text
  context 32, embed_dim 128) are registered with ``open_clip.add_model_config`` at import, so
  every open_clip entry point knows them by name.
* An ``EncoderSpec`` names a model and its weights: an open_clip pretrained tag (downloaded by
  open_clip, so only where a hub is reachable), a local checkpoint file, or ``None`` for a
  random initialisation seeded with ``INIT_SEED`` (reproducible, used by benchmarks).
* Checkpoints use open_clip's format ``{"epoch", "name", "state_dict", "optimizer", ...}``
  holding only tensors and plain Python values, so ``torch.load(path, weights_only=True)``
  and ``open_clip.create_model_and_transforms(name, pretrained=path)`` both read them.
  open_clip 3.3 itself loads with ``weights_only=True`` (``open_clip.factory.load_state_dict``);
  we pass it explicitly.
* ``write_model_folder`` makes a directory an open_clip model folder that plain open_clip loads as
  ``open_clip.create_model_and_transforms("local-dir:<dir>")`` (and clip_benchmark as
  ``--model local-dir:<dir>``): ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
  the weights as ``open_clip_model.safetensors`` (open_clip's first choice in a local dir; it only
  looks at ``*.safetensors``, ``*.bin`` and ``*.pth``, so a ``checkpoint.pt`` beside it is ignored).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import open_clip
import torch

from dynamics_assets.core.io.hashing import file_sha256

from dynamics_assets.core.io.atomic import atomic_path
from dynamics_assets.core.model.configs import CONFIG_DIR, check_model_name, open_clip_with_configs  # noqa: F401 (CONFIG_DIR, check_model_name re-exported)
from dynamics_assets.core.model.devices import resolve_device, resolve_precision
from dynamics_assets.core.model.spec import EncoderSpec  # noqa: F401 (re-exported: the spec record is light, the loading here is not)

open_clip_with_configs()  # the project's model configs, registered at import

INIT_SEED = 0  # seed of the random initialisation when no weights are given
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_weights(spec: EncoderSpec) -> tuple[str | None, str]:
    """``(value for open_clip's pretrained argument, identity of the weights)``.

    Tags win over paths, as in open_clip. The identity is ``tag:<model>/<tag>``,
    ``sha256:<hex of the checkpoint file>`` or ``init-seed:<INIT_SEED>``.
    """
    if spec.pretrained is None:
        return None, f"init-seed:{INIT_SEED}"
    tags = open_clip.list_pretrained_tags_by_model(spec.model_name)
    if spec.pretrained in tags:
        return spec.pretrained, f"tag:{spec.model_name}/{spec.pretrained}"
    if os.path.isfile(spec.pretrained):
        return spec.pretrained, f"sha256:{file_sha256(spec.pretrained)}"
    raise ValueError(
        f"pretrained={spec.pretrained!r} for {spec.model_name!r} is neither an open_clip tag "
        f"(tags for this model: {tags or 'none'}) nor an existing checkpoint file"
    )


def autocast_for(device: torch.device, precision: str) -> ContextManager[Any]:
    """bf16/fp16 autocast on CUDA; a no-op (fp32) elsewhere."""
    if device.type == "cuda" and precision in _AUTOCAST_DTYPES:
        return torch.autocast("cuda", dtype=_AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


@dataclass
class Encoder:
    """A loaded open_clip model in eval mode with its inference transform and tokenizer."""

    spec: EncoderSpec
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    weights_id: str
    device: torch.device

    @property
    def precision(self) -> str:
        """The precision actually computed in (fp32 off CUDA)."""
        return resolve_precision(self.spec.precision, self.device.type)

    @property
    def embed_dim(self) -> int:
        return int(open_clip.get_model_config(self.spec.model_name)["embed_dim"])

    @property
    def identity(self) -> dict[str, str]:
        """What determines the embeddings: stored next to them, compared on resume."""
        return {"model_name": self.spec.model_name, "weights": self.weights_id, "precision": self.precision}

    def autocast(self) -> ContextManager[Any]:
        return autocast_for(self.device, self.precision)


def create_model(
    model_name: str, pretrained: str | None = None, device: str | torch.device = "cpu", seed: int = INIT_SEED
):
    """``(model, train transform, eval transform)`` from open_clip; the random init is seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device, weights_only=True
        )


def load_encoder(spec: EncoderSpec, device: str | torch.device = "cpu") -> Encoder:
    pretrained, weights_id = resolve_weights(spec)
    device = torch.device(resolve_device(str(device)))
    model, _, preprocess = create_model(spec.model_name, pretrained, device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.model_name)
    return Encoder(spec, model, preprocess, tokenizer, weights_id, device)


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    model_name: str,
    epoch: int,
    step: int,
    samples_seen: int,
    optimizer: torch.optim.Optimizer | dict[str, Any] | None = None,
    scheduler_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write an open_clip checkpoint atomically (weights on CPU; tensors and plain values only).

    ``optimizer``: the optimizer or its ``state_dict()`` (e.g. ``TrainState.optimizer``).
    """
    checkpoint = {
        "epoch": epoch,
        "name": model_name,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer,
        "scheduler": scheduler_state,
        "step": step,
        "samples_seen": samples_seen,
        "extra": extra or {},
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # a file object, not the path: torch.save names the zip's records after a path's file name
        # (a random temporary name here), which would make identical checkpoints differ in bytes
        torch.save(checkpoint, f)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


MODEL_CONFIG_NAME = "open_clip_config.json"  # open_clip's local-dir config file
MODEL_WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip's preferred local-dir weights file


def model_folder_config(model_name: str) -> dict[str, Any]:
    """``open_clip_config.json`` content for ``model_name``: its model config and the preprocessing
    open_clip gives it when loaded from a checkpoint file (the defaults, at the model's image size),
    so ``local-dir:`` evaluates exactly as ``load_encoder(EncoderSpec(name, checkpoint))``."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg

    check_model_name(model_name)
    model_cfg = open_clip.get_model_config(model_name)
    preprocess = asdict(PreprocessCfg())
    size = (model_cfg.get("vision_cfg") or {}).get("image_size")
    if size is not None:
        preprocess["size"] = size
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}


def write_model_folder(directory: str | os.PathLike, model_name: str, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``open_clip_config.json`` and ``open_clip_model.safetensors`` (weights only, CPU,
    deterministic bytes) into ``directory`` atomically; returns the directory."""
    import json

    from safetensors.torch import save_file

    d = Path(directory)
    with atomic_path(d / MODEL_CONFIG_NAME) as tmp:
        Path(tmp).write_text(json.dumps(model_folder_config(model_name), indent=2, sort_keys=True) + "\n")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in sorted(state_dict.items())}
    with atomic_path(d / MODEL_WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})  # one key: safetensors orders
        # its metadata map at random, so several keys would give different bytes for the same weights
    return d
