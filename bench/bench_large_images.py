"""Benchmark: peak memory of collating one batch of large images, before and after bounded decoding.

A batch of eight ~81-Mpx PNGs (9000 x 9000 RGB, a few hundred kB each: large flat areas) goes
through open_clip's evaluation preprocess (224 px) twice, each time in a fresh subprocess whose peak
resident memory is read from ``/proc/self/status`` (``VmHWM``; Pillow's pixel buffers are C
allocations that ``tracemalloc`` does not see):

* before: the old ``collate`` — ``preprocess(pair.image)`` on each lazily opened image, so each
  image is decoded at full size and stays decoded on its pair until the batch is done (eight
  full-size images held at once);
* after: ``pool.collate`` — images decoded one by one, reduced to a shorter side of at least
  2 x 224 px, preprocessed and released before the next (``max_pixels`` raised to 100 Mpx: 81 Mpx
  is over the default 64-Mpx cap, which would refuse these images).

Both produce the same tensor shape; the peak is reported above the memory the process held
before collating (imports and the encoded bytes), with the ratio.

    .venv/bin/python bench/bench_large_images.py [--images 8] [--side 9000]
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def make_images(folder: Path, n: int, side: int) -> list[Path]:
    from PIL import Image, ImageDraw

    paths = []
    for i in range(n):
        im = Image.new("RGB", (side, side), (20 * i % 256, 90, 160))
        draw = ImageDraw.Draw(im)
        for k in range(12):  # some structure, still very compressible
            x = (k * 733 + i * 97) % side
            draw.rectangle([x, x // 2, min(side - 1, x + side // 7), min(side - 1, x // 2 + side // 9)],
                           fill=(255 - 20 * k % 256, 40 * i % 256, 10 * k % 256))
        path = folder / f"{i:03d}.png"
        im.save(path, "PNG")
        im.close()
        paths.append(path)
    return paths


def child(mode: str, paths: list[str]) -> dict:
    import torch
    from open_clip.transform import image_transform
    from PIL import Image

    from dynamics_assets.core.ingest.pool import Pair, collate

    Image.MAX_IMAGE_PIXELS = None  # the old path had only Pillow's limit; 81 Mpx passes it anyway
    preprocess = image_transform(224, is_train=False)
    tokenizer = lambda texts: torch.zeros(len(texts), 77, dtype=torch.long)  # noqa: E731
    pairs = [Pair(i, f"{i:032x}", Image.open(io.BytesIO(Path(p).read_bytes())), "x") for i, p in enumerate(paths)]
    baseline = _status("VmRSS")
    start = time.perf_counter()
    if mode == "before":  # the old collate, verbatim
        images = torch.stack([preprocess(p.image) for p in pairs])
        tokens = tokenizer([p.caption for p in pairs])
    else:
        images, tokens = collate(pairs, preprocess, tokenizer, max_pixels=100_000_000)
    seconds = time.perf_counter() - start
    return {"mode": mode, "baseline": baseline, "peak": _status("VmHWM"), "seconds": seconds,
            "shape": list(images.shape)}


def run(mode: str, paths: list[Path]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, *map(str, paths)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--side", type=int, default=9000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1:])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.images, args.side)
        sizes = [p.stat().st_size for p in paths]
        print(f"{args.images} PNGs of {args.side}x{args.side} = {args.side ** 2 / 1e6:.0f} Mpx, "
              f"{min(sizes) / 1e3:.0f}-{max(sizes) / 1e3:.0f} kB each")
        results = {mode: run(mode, paths) for mode in ("before", "after")}
    for mode, r in results.items():
        print(f"{mode:>6}: peak {r['peak'] / 2**20:7.0f} MiB  (above the {r['baseline'] / 2**20:.0f} MiB "
              f"held before collating: {(r['peak'] - r['baseline']) / 2**20:7.0f} MiB)  "
              f"{r['seconds']:.1f} s  batch {r['shape']}")
    before, after = (results[m]["peak"] - results[m]["baseline"] for m in ("before", "after"))
    print(f"peak above baseline, before / after: {before / max(after, 1):.1f}x")


if __name__ == "__main__":
    main()
