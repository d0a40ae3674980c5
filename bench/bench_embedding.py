"""Embedding throughput from webdataset tar shards: input pipeline vs. model forward.

Writes a throw-away pool of synthetic pairs (tar shards + manifests built by ``manifest.build_manifest``)
and measures, for one encoder (weights randomly initialised unless ``--pretrained`` is given; nothing
is downloaded):

* ``input``      read tars + decode + preprocess + tokenise (``pairs`` + ``embedding.prefetched``), img/s
* ``forward``    ``encode_image`` alone on a preprocessed batch already on the device, img/s
* ``forward_it`` ``encode_image`` + ``encode_text``, pairs/s
* ``end_to_end`` ``embed_shards`` on the fresh pool (I/O, both towers, fp16 .npy written), pairs/s

``input / forward_it`` < 1 means the input pipeline bounds the end-to-end rate; > 1 means compute.

    python bench/bench_embedding.py                                   # tiny model, CPU
    python bench/bench_embedding.py --model ViT-B-32 --device cuda --precision bf16 --workers 16
"""
from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image, ImageDraw

from dynamics_assets.core.embed.encode import embed_shards, prefetched
from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.model.clip import EncoderSpec, load_encoder
from dynamics_assets.core.ingest.pool import collate, iter_shard_pairs, pool_shards

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def _image(rng: np.random.Generator, size: int, colour: tuple[int, int, int]) -> Image.Image:
    """A noisy gradient background with one ellipse: compresses and decodes like a small photo."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    base = rng.uniform(0.3, 1.0, size=3) * (ramp[:, None, None] + ramp[None, :, None]) / 2
    noisy = base + rng.normal(0, 12, size=(size, size, 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    x, y = rng.integers(0, size // 2, size=2)
    w = int(rng.integers(size // 4, size // 2))
    ImageDraw.Draw(image).ellipse((int(x), int(y), int(x) + w, int(y) + w), fill=colour)
    return image


def write_shards(root: Path, n_images: int, shard_size: int, image_size: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    fmt = "png" if image_size <= 64 else "jpg"
    paths = []
    for s, start in enumerate(range(0, n_images, shard_size)):
        path = root / f"bench-{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(start, min(start + shard_size, n_images)):
                name = COLOURS[i % len(COLOURS)]
                buf = io.BytesIO()
                _image(rng, image_size, tuple(int(v) for v in rng.integers(0, 256, 3))).save(
                    buf, format="PNG" if fmt == "png" else "JPEG", quality=90)
                for member, data in ((f"{i:09d}.{fmt}", buf.getvalue()),
                                     (f"{i:09d}.txt", f"a {name} ellipse on a gradient, photo {i}".encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_input(encoder, manifest_dir: Path, shards_dir: Path, batch_size: int, workers: int) -> float:
    to_tensors = lambda b: collate(b, encoder.preprocess, encoder.tokenizer)  # noqa: E731
    n, start = 0, time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for shard in pool_shards(manifest_dir):
            pairs = list(iter_shard_pairs(shard, shards_dir))
            chunks = (pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size))
            for images, _ in prefetched(pool, to_tensors, chunks, workers):
                n += len(images)
    return n / (time.perf_counter() - start)


def measure_forward(encoder, batch_size: int, seconds: float, text: bool) -> float:
    size = encoder.model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    images = torch.randn(batch_size, 3, size, size, device=encoder.device)
    tokens = encoder.tokenizer(["a red ellipse on a gradient, photo 1"] * batch_size).to(encoder.device)
    with torch.inference_mode(), encoder.autocast():
        encoder.model.encode_image(images)  # warm-up
        _sync(encoder.device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            encoder.model.encode_image(images)
            if text:
                encoder.model.encode_text(tokens)
            _sync(encoder.device)
            n += batch_size
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dynamics-tiny-32")
    parser.add_argument("--pretrained", default=None, help="open_clip tag or checkpoint (default: random init)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of the stored images (default: the model's input if <= 64 px, else 256)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--forward-seconds", type=float, default=5.0)
    args = parser.parse_args()

    encoder = load_encoder(EncoderSpec(args.model, args.pretrained, args.precision), args.device)
    model_size = open_clip.get_model_config(args.model)["vision_cfg"]["image_size"]
    image_size = args.image_size or (model_size if model_size <= 64 else 256)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "shards").mkdir()
        started = time.perf_counter()
        build_manifest(write_shards(root / "shards", args.images, args.shard_size, image_size), root / "manifest")
        setup_s = time.perf_counter() - started
        input_rate = measure_input(encoder, root / "manifest", root / "shards", args.batch_size, args.workers)
        forward = measure_forward(encoder, args.batch_size, args.forward_seconds, text=False)
        forward_it = measure_forward(encoder, args.batch_size, args.forward_seconds, text=True)
        summary = embed_shards(encoder, root / "manifest", root / "shards", root / "emb",
                               batch_size=args.batch_size, workers=args.workers)
    result = {
        "model": args.model, "device": str(encoder.device), "precision": encoder.precision,
        "torch_threads": torch.get_num_threads(), "workers": args.workers, "batch_size": args.batch_size,
        "images": summary.pairs_embedded, "stored_image_px": image_size, "setup_s": round(setup_s, 1),
        "input_img_s": round(input_rate, 1), "forward_img_s": round(forward, 1),
        "forward_image_text_pairs_s": round(forward_it, 1),
        "end_to_end_pairs_s": round(summary.pairs_embedded / summary.seconds, 1),
        "input_over_forward_it": round(input_rate / forward_it, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
