"""webdataset / img2dataset tar shards: low-level member access and a streaming sample reader.

A shard is a tar of members ``{key}.{ext}`` grouped by key: an image (jpg/jpeg/png/webp),
``{key}.txt`` (caption) and an optional ``{key}.json`` (metadata, often with ``uid``).

Naming follows webdataset: the key is the member path up to the first '.' of its basename
(a sub-folder stays part of the key, so ``a/000.jpg`` and ``b/000.jpg`` are two samples);
the extension is the rest of the basename, lowercased.

``iter_samples`` streams a shard member by member (``tarfile`` stream mode: constant memory
per sample, no seek). It never drops anything silently:

* a file that is not a readable tar at all raises ``ShardReadError`` naming the file;
* a tar that is cut short or corrupt mid-way (including one cut exactly at a header
  boundary, which ``tarfile`` itself treats as a normal end) yields every sample read so
  far, then one final tail record flagged ``truncated_tar``: the sample whose members were
  being read when the data ended (possibly with no member), or ``key=None`` if none was;
* a key whose members are not consecutive (webdataset requires them to be) is yielded
  again, with its original ``row``, flagged ``non_consecutive_members``;
* a key with the same extension twice keeps the first member and is flagged
  ``duplicate_member``;
* non-file members (directories, links, devices) are skipped; members with unknown
  extensions are kept in ``RawSample.members`` for the caller to ignore.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

# Problem codes attached to a RawSample (a subset of the manifest's reason vocabulary).
TRUNCATED_TAR = "truncated_tar"
NON_CONSECUTIVE_MEMBERS = "non_consecutive_members"
DUPLICATE_MEMBER = "duplicate_member"


class ShardReadError(Exception):
    """The file cannot be read as a tar at all (not a tar, empty file, broken first header)."""

    def __init__(self, shard_path: str | Path, cause: BaseException):
        super().__init__(f"{shard_path}: not a readable tar shard ({cause})")
        self.shard_path = Path(shard_path)


@dataclass(frozen=True)
class MemberRef:
    name: str  # full member name inside the tar, e.g. "00000/000000012.jpg"
    data: bytes
    offset: int | None = None  # byte offset of the data in the file (uncompressed tars only)


@dataclass
class RawSample:
    key: str | None  # None only for a truncated tail with no member of any key read
    row: int  # 0-based position of the key's first appearance among the shard's keys
    members: dict[str, MemberRef] = field(default_factory=dict)  # extension -> member
    problems: list[str] = field(default_factory=list)  # problem codes, see module docstring

    @property
    def truncated(self) -> bool:
        return TRUNCATED_TAR in self.problems


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/000123.Url.TXT"`` -> ``("dir/000123", "url.txt")``."""
    folder, slash, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return folder + slash + stem, ext.lower()


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


class _EndTrackingTarInfo(tarfile.TarInfo):
    """Records on the TarFile the header error that ended its iteration.

    After the first member ``tarfile`` ends iteration silently on a missing, cut or invalid
    header; only an all-zero block (``EOFHeaderError``) is a genuine end-of-archive marker.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            tar.end_header_error = e  # type: ignore[attr-defined]
            raise


def _open_stream(shard_path: str | Path) -> tarfile.TarFile:
    try:
        return tarfile.open(shard_path, mode="r|*", tarinfo=_EndTrackingTarInfo)
    except tarfile.TarError as e:
        raise ShardReadError(shard_path, e) from e


def _ended_cleanly(tar: tarfile.TarFile) -> bool:
    return isinstance(getattr(tar, "end_header_error", None), tarfile.EOFHeaderError)


def _start_group(key: str, rows: dict[str, int]) -> RawSample:
    if key in rows:
        return RawSample(key, rows[key], problems=[NON_CONSECUTIVE_MEMBERS])
    rows[key] = len(rows)
    return RawSample(key, rows[key])


def _add_member(sample: RawSample, ext: str, member: MemberRef) -> None:
    if ext in sample.members:
        if DUPLICATE_MEMBER not in sample.problems:
            sample.problems.append(DUPLICATE_MEMBER)
        return
    sample.members[ext] = member


def iter_samples(shard_path: str | Path) -> Iterator[RawSample]:
    """Stream the samples of one shard in tar order (see the module docstring for failures)."""
    rows: dict[str, int] = {}
    current: RawSample | None = None
    complete = False
    with _open_stream(shard_path) as tar:
        seekable = getattr(tar.fileobj, "comptype", "tar") == "tar"  # offsets are file offsets
        while True:
            try:
                info = tar.next()
            except tarfile.TarError:
                break
            if info is None:
                complete = _ended_cleanly(tar)
                break
            tar.members.clear()  # stream mode would otherwise keep every TarInfo of the shard
            if not info.isfile():
                continue
            key, ext = split_member_name(info.name)
            if current is None or key != current.key:
                if current is not None:
                    yield current
                current = _start_group(key, rows)
            try:
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
            except tarfile.TarError:
                break
            _add_member(current, ext, MemberRef(info.name, data, info.offset_data if seekable else None))
    if complete:
        if current is not None:
            yield current
        return
    tail = current if current is not None else RawSample(None, len(rows))
    tail.problems.append(TRUNCATED_TAR)
    yield tail


def read_ranges(shard_path: str | Path, ranges: Iterable[tuple[int, int]]) -> list[bytes]:
    """The bytes at ``(offset, size)`` ranges of one file, read with seeks in the given order.

    With the member offsets recorded in the manifest, a loader reads only the members it needs
    instead of parsing every tar header of the shard."""
    out = []
    with open(shard_path, "rb") as f:
        for offset, size in ranges:
            f.seek(offset)
            data = f.read(size)
            if len(data) != size:
                raise ValueError(f"{shard_path}: {size} bytes expected at offset {offset}, got {len(data)}")
            out.append(data)
    return out
