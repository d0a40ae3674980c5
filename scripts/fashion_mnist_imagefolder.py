#!/usr/bin/env python
"""Debian's Fashion-MNIST IDX files -> an ImageFolder labelled set (``core/evaluate/labelled.py``).

    python scripts/fashion_mnist_imagefolder.py OUT [--split test] [--limit-per-class N] [--size 28]

Reads ``{t10k|train}-{images-idx3,labels-idx1}-ubyte[.gz]`` from ``--source`` (default
``/usr/share/datasets/fashion-mnist``, Debian package ``dataset-fashion-mnist``:
``scripts/install_fashion_mnist.sh``) and writes ``OUT/<class>/<index>.png`` — 10 class folders
(``t-shirt``, ``trouser``, ``pullover``, ``dress``, ``coat``, ``sandal``, ``shirt``, ``sneaker``,
``bag``, ``ankle_boot``; the loader reads ``_`` as a space) and ``OUT/synonyms.txt`` (the original
label "T-shirt/top"; not "top", which captions use for much else: ``t-shirt: tee``). ``<index>`` is the image's position in the IDX file
(5 digits). ``--limit-per-class N`` keeps the first N images of each class in file order; ``--size``
resizes the 28 px greyscale images (bicubic) to a square side.

Deterministic and idempotent: the same arguments give byte-identical files; a file that already
holds the right bytes is left alone, others are written atomically (temp file + rename), and PNGs
in the class folders that the arguments do not produce (a previous run with a larger limit) are
removed. No network access.
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install -y dataset-fashion-mnist (or scripts/install_fashion_mnist.sh)"
# Fashion-MNIST label id -> class folder (label order of the dataset's README).
CLASS_FOLDERS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle_boot")
SYNONYMS = "t-shirt: tee\n"
_PREFIX = {"test": "t10k", "train": "train"}


def _open(path: Path):
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.exists():
            return gzip.open(candidate, "rb") if candidate.suffix == ".gz" else open(candidate, "rb")
    raise FileNotFoundError(f"{path}[.gz] not found; install Debian's Fashion-MNIST: {INSTALL_HINT}")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (unsigned bytes: magic 0x08, N dimensions, big-endian sizes) as a uint8 array."""
    with _open(path) as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {zero:#06x} {dtype:#04x})")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} bytes of data for shape {shape}")
    return data.reshape(shape)


def load_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = _PREFIX[split]
    images = read_idx(source / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(source / f"{prefix}-labels-idx1-ubyte")
    if images.ndim != 3 or labels.shape != (len(images),) or labels.max(initial=0) >= len(CLASS_FOLDERS):
        raise ValueError(f"{source}: {split} images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def png_bytes(pixels: np.ndarray, size: int | None) -> bytes:
    image = Image.fromarray(pixels, mode="L")
    if size and size != image.width:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.exists() and path.read_bytes() == data:
        return False
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def write_imagefolder(out: Path, *, source: Path = DEFAULT_SOURCE, split: str = "test",
                      limit_per_class: int | None = None, size: int | None = None) -> dict[str, int]:
    """Write the ImageFolder; returns ``{class folder: images}`` (plus counts of written/removed)."""
    images, labels = load_split(source, split)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    written = removed = 0
    for label, folder in enumerate(CLASS_FOLDERS):
        indices = np.flatnonzero(labels == label)
        if limit_per_class is not None:
            indices = indices[:limit_per_class]
        class_dir = out / folder
        class_dir.mkdir(exist_ok=True)
        wanted = {f"{i:05d}.png" for i in indices.tolist()}
        for stale in sorted(p for p in class_dir.glob("*.png") if p.name not in wanted):
            stale.unlink()
            removed += 1
        for i in indices.tolist():
            written += _write_if_changed(class_dir / f"{i:05d}.png", png_bytes(images[i], size))
        counts[folder] = len(indices)
    written += _write_if_changed(out / "synonyms.txt", SYNONYMS.encode())
    return {**counts, "_written": written, "_removed": removed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (the ImageFolder root)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of the IDX files")
    parser.add_argument("--split", choices=sorted(_PREFIX), default="test", help="t10k (test) or train files")
    parser.add_argument("--limit-per-class", type=int, default=None, help="first N images of each class")
    parser.add_argument("--size", type=int, default=None, help="square side to resize to (default: 28, native)")
    args = parser.parse_args(argv)
    if args.limit_per_class is not None and args.limit_per_class < 0:
        parser.error("--limit-per-class must be >= 0")
    try:
        counts = write_imagefolder(args.out, source=args.source, split=args.split,
                                   limit_per_class=args.limit_per_class, size=args.size)
    except FileNotFoundError as e:
        print(f"fashion_mnist_imagefolder: {e}", file=sys.stderr)
        return 2
    total = sum(v for k, v in counts.items() if not k.startswith("_"))
    print(f"{args.out}: {total} images in {len(CLASS_FOLDERS)} class folders "
          f"({counts['_written']} file(s) written, {counts['_removed']} removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
