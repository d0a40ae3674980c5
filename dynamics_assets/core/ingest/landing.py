"""Shards landing in the raw-data folder: which are complete, which are still being written.

A writer (img2dataset, a copy, an upload) makes a shard appear before it is whole. A ``.tar``
shard is taken only when both hold:

1. it is a *complete* tar: a whole number of 512-byte blocks, ending with the end-of-archive
   marker (two zero blocks), and a walk over its headers reaches that marker without any member
   running past it (``tar_problem``);
2. it is *settled*: its size and mtime are the same as at the previous look (``advance``), so a
   writer that happens to stop at a block of zeros is not mistaken for a finished one.

Compressed shards (gzip, bzip2 or xz, recognised by their magic bytes whatever the name) follow
the one rule of ``io.webdataset`` that the manifest applies too: they are accepted, and complete
when the decompressed tar reaches its end-of-archive marker (every member read through) and the
compressed stream then ends properly (gzip: CRC and length trailer). A member name that is not
valid UTF-8 does not make a shard incomplete: the manifest quarantines that sample
(``bad_member_name``).

``advance`` is the pure step of the landing sensor: it takes the last cursor, what is in the folder
now and which shards are registered already, and says which shards are ready, which wait (and
why), and the next cursor. Registered shards are never offered again; a shard that landed while
nothing watched is found at the next look, because every look lists the whole folder.
Only local folders (or ``file://`` URIs) are watched; names starting with '.' are temporary files
of writers and are ignored, as is anything not ending in ``.tar``.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from dynamics_assets.core.io.webdataset import STREAM_ERRORS, ShardReadError, compression, drain, ended_cleanly, tar_stream

BLOCK = 512
END_OF_ARCHIVE = 2 * BLOCK


def local_folder(uri: str | os.PathLike) -> Path:
    """A folder path from a path or a ``file://`` URI (parsed as a URL: ``sources.local_path``);
    other schemes and hosts are refused."""
    from dynamics_assets.core.ingest.sources import local_path

    return local_path(uri)


def tar_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not (yet) a complete tar (uncompressed, or compressed as the module docstring
    says), or None if it is one."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    kind = compression(path)
    if kind is not None:
        return _compressed_problem(path, kind)
    if size % BLOCK:
        return f"size {size} is not a whole number of {BLOCK}-byte tar blocks (cut mid-block)"
    if size < END_OF_ARCHIVE:
        return f"size {size} is smaller than a tar's end-of-archive marker"
    with open(path, "rb") as f:
        f.seek(size - END_OF_ARCHIVE)
        if f.read(END_OF_ARCHIVE).strip(b"\0"):
            return "no end-of-archive marker (two zero blocks) at the end: still being written?"
    end = 0
    try:
        with tarfile.open(path, "r:") as tar:  # seeks from header to header: reads no member data
            for member in tar:
                end = member.offset_data + -(-member.size // BLOCK) * BLOCK
    except (tarfile.TarError, OSError) as err:
        return f"tar headers unreadable: {err}"
    if end > size - END_OF_ARCHIVE:
        return f"last member ends at byte {end}, past the end-of-archive marker at {size - END_OF_ARCHIVE}"
    return None


def _compressed_problem(path: Path, kind: str) -> str | None:
    """Read the whole compressed stream: the tar must reach its end-of-archive marker and the
    compressed stream must end properly after it."""
    try:
        with tar_stream(path) as (tar, stream):
            try:
                while tar.next() is not None:  # stream mode: reads through each member's data
                    tar.members.clear()
            except STREAM_ERRORS as err:
                return f"{kind}-compressed tar unreadable: {err}"
            clean = ended_cleanly(tar)
            error = drain(stream)
    except ShardReadError as err:
        return f"{kind}-compressed tar unreadable: {err}"
    if error is not None:
        return f"{kind}-compressed stream cut or corrupt ({type(error).__name__}: {error}): still being written?"
    if not clean:
        return f"{kind}-compressed tar ends without its end-of-archive marker: still being written?"
    return None


@dataclass(frozen=True)
class Observation:
    name: str
    size: int
    mtime_ns: int


def observe(folder: str | os.PathLike, *, skip: Iterable[str] = ()) -> list[Observation]:
    """Every ``*.tar`` in ``folder`` (not hidden, not in ``skip``), by name."""
    skip = set(skip)
    found = []
    for path in Path(folder).glob("*.tar"):
        if path.name.startswith(".") or path.name in skip or not path.is_file():
            continue
        st = path.stat()
        found.append(Observation(path.name, st.st_size, st.st_mtime_ns))
    return sorted(found, key=lambda o: o.name)


@dataclass(frozen=True)
class LandingCursor:
    """``seen``: shards not yet registered, with the (size, mtime_ns) of the last look.
    ``ingesting``: shards registered and sent to ingestion, not yet followed by a re-curation."""

    seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    ingesting: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"seen": {k: list(v) for k, v in sorted(self.seen.items())},
                           "ingesting": list(self.ingesting)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "LandingCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls({k: (int(v[0]), int(v[1])) for k, v in data.get("seen", {}).items()},
                   tuple(data.get("ingesting", ())))


@dataclass(frozen=True)
class LandingStep:
    ready: list[Observation]  # complete, settled, not registered: register them now
    waiting: dict[str, str]  # shard -> why it is not ready yet
    cursor: LandingCursor  # ``ingesting`` unchanged: the caller adds what it sends to ingestion


def advance(cursor: LandingCursor, observed: Iterable[Observation], registered: Iterable[str],
            folder: str | os.PathLike) -> LandingStep:
    """One look at the folder: which unregistered shards are ready and which must wait."""
    registered = set(registered)
    ready: list[Observation] = []
    waiting: dict[str, str] = {}
    seen: dict[str, tuple[int, int]] = {}
    for obs in observed:
        if obs.name in registered:
            continue
        now = (obs.size, obs.mtime_ns)
        previous = cursor.seen.get(obs.name)
        if previous != now:
            seen[obs.name] = now
            waiting[obs.name] = ("first seen: waiting one more look for it to settle" if previous is None
                                 else "still changing (size or mtime moved since the last look)")
            continue
        problem = tar_problem(Path(folder) / obs.name)
        if problem is None:
            ready.append(obs)
        else:
            seen[obs.name] = now
            waiting[obs.name] = problem
    return LandingStep(ready, waiting, LandingCursor(seen, cursor.ingesting))
