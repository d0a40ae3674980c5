"""webdataset / img2dataset tar shards: low-level member access.

A shard is a tar of members ``{key}.{ext}`` grouped by key: an image (jpg/jpeg/png/webp),
``{key}.txt`` (caption) and an optional ``{key}.json`` (metadata, often with ``uid``).
"""
from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterable

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def read_members(shard_path: str | Path, names: Iterable[str]) -> dict[str, bytes]:
    """Read the named members of one shard in a single sequential pass.

    Returns ``{member_name: bytes}``; raises ``KeyError`` naming the shard if any is missing.
    """
    wanted = set(names)
    out: dict[str, bytes] = {}
    if not wanted:
        return out
    with tarfile.open(shard_path, mode="r:*") as tar:
        for info in tar:
            if info.name in wanted and info.isfile():
                f = tar.extractfile(info)
                assert f is not None
                out[info.name] = f.read()
                if len(out) == len(wanted):
                    break
    missing = wanted - out.keys()
    if missing:
        raise KeyError(f"{shard_path}: {len(missing)} member(s) not found, e.g. {sorted(missing)[:3]}")
    return out
