"""The one chunked reader of ``.npy`` files: fixed-size row slices read with plain sequential reads.

Every chunk is a fresh array (consumers may keep it), so memory stays one chunk however large the
file. A file cut short (a crash mid-write, a copy in progress) raises ``ValueError`` naming the file
and the row where it ends, instead of a bare reshape error deep inside numpy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np


def npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype, int, bool]:
    """``(shape, dtype, data offset, fortran order)`` of a .npy file, without reading its data."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
        except ValueError as e:
            raise ValueError(f"{path}: not a .npy file ({e})") from e
        return tuple(shape), dtype, f.tell(), bool(fortran and len(shape) > 1)


def npy_chunks(path: str | Path, rows: int, dtype: type | np.dtype | None = None,
               ndim: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, rows[start:start+rows])`` of a .npy file in order.

    ``dtype`` / ``ndim``: refuse a file of another element type or rank (named in the error).
    """
    shape, found, offset, fortran = npy_header(path)
    if dtype is not None and found != np.dtype(dtype).newbyteorder("<") and found != np.dtype(dtype):
        raise ValueError(f"{path}: expected dtype {np.dtype(dtype).name}, got {found}")
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{path}: expected a {ndim}-d array, got shape {shape}")
    n = shape[0] if shape else 0
    row_shape = shape[1:]
    if fortran:  # column-major on disk (np.save of a transposed or column-sliced array): rows are
        # strided, so read them through a memory map re-opened per chunk (still one chunk resident)
        expected = offset + found.itemsize * int(np.prod(shape, dtype=np.int64))
        if Path(path).stat().st_size < expected:
            raise ValueError(f"{path}: truncated: {shape} declared, {Path(path).stat().st_size} of {expected} bytes")
        for start in range(0, n, rows):
            yield start, np.ascontiguousarray(np.load(path, mmap_mode="r")[start:start + rows])
        return
    row_bytes = found.itemsize * int(np.prod(row_shape, dtype=np.int64))
    with open(path, "rb") as f:
        f.seek(offset)
        for start in range(0, n, rows):
            m = min(rows, n - start)
            buf = np.empty((m, *row_shape), dtype=found)
            got = f.readinto(memoryview(buf).cast("B")) if buf.nbytes else 0
            if got != m * row_bytes:
                raise ValueError(f"{path}: truncated: {shape} declared, data ends near row {start + got // max(1, row_bytes)}")
            yield start, buf

