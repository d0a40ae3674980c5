"""Atomic writes: write to a temporary sibling, fsync, then rename over the target.

A reader never sees a half-written file, and a crash leaves either the old artefact or none.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    The temporary name keeps the target's extension (some writers, e.g. ``np.save``,
    append one otherwise).
    """
    path = Path(path)
    tmp = _tmp_sibling(path, suffix=path.suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def replace_marked_block(text: str, start: str, end: str, block: str, *, append: bool = True) -> str:
    """``text`` with its ``start`` … ``end`` block (the markers included) replaced by ``block``, which
    carries its own markers. Without the markers ``block`` is appended after a blank line
    (``append``), else ValueError."""
    if start in text and end in text:
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        return head + block.rstrip("\n") + tail
    if not append:
        raise ValueError(f"no {start} … {end} block to write into")
    return text.rstrip("\n") + "\n\n" + block


def write_marked_block(path: str | os.PathLike, start: str, end: str, block: str, *, append: bool = True) -> None:
    """Replace (or append, see ``replace_marked_block``) the marked block of a text file, atomically."""
    try:
        text = replace_marked_block(Path(path).read_text(), start, end, block, append=append)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    write_text(path, text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array, allow_pickle=False)


def write_parquet(path: str | os.PathLike, table) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
