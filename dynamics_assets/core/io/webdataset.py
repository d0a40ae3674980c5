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
* a member name that is not valid UTF-8 is kept escaped (``safe_name``: undecodable bytes as
  ``\\xNN``) and its sample flagged ``bad_member_name``;
* a symbolic or hard link member flags its sample ``link_member`` and a device or fifo member
  ``special_member``: nothing is ever extracted or followed, the sample is still yielded;
* directory members are skipped (structure, not data); members with unknown extensions are kept
  in ``RawSample.members`` for the caller to ignore.

Compressed shards (gzip, bzip2, xz: recognised by their magic bytes, whatever the file name) are
accepted everywhere under one rule (``tar_stream``, shared with the landing sensor): the stream is
decompressed with the standard library (which checks the CRC and the end of the compressed
stream), the tar inside must reach its end-of-archive marker, and the compressed stream is read to
its end; a compressed stream cut or corrupt after the archive's end flags the last sample
``truncated_tar`` (its data may be intact, but the shard is not what its writer finished).
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

# Problem codes attached to a RawSample (a subset of the manifest's reason vocabulary).
TRUNCATED_TAR = "truncated_tar"
NON_CONSECUTIVE_MEMBERS = "non_consecutive_members"
DUPLICATE_MEMBER = "duplicate_member"
BAD_MEMBER_NAME = "bad_member_name"
LINK_MEMBER = "link_member"
SPECIAL_MEMBER = "special_member"

# Compressed shards, recognised by their first bytes (as ``tarfile``'s "r|*" does).
_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
_DECOMPRESSORS = {"gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"), "bz2": bz2.BZ2File, "xz": lzma.LZMAFile}
# What reading a cut or corrupt (possibly compressed) stream raises.
STREAM_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


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


def safe_name(name: str) -> tuple[str, bool]:
    """``(name, True)`` for a valid UTF-8 member name; else the name with its undecodable bytes
    escaped (``b"caf\\xe9.jpg"`` -> ``"caf\\\\xe9.jpg"``) and False. ``tarfile`` decodes names with
    ``surrogateescape``, so a non-UTF-8 name arrives holding lone surrogates that no UTF-8 writer
    (parquet, JSON) accepts."""
    try:
        name.encode("utf-8")
        return name, True
    except UnicodeEncodeError:
        pass
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return name.encode("utf-8", "backslashreplace").decode("utf-8"), False
    return raw.decode("utf-8", "backslashreplace"), False


def compression(path: str | Path) -> str | None:
    """"gz", "bz2" or "xz" when the file starts with that format's magic bytes, else None."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


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
    with tar_stream(shard_path) as (tar, _):
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


class Decompressed:
    """A decompressing reader for ``tarfile``: a compressed stream that is cut or corrupt reads as
    the end of the data (so the tar reader yields what came before, as for a cut uncompressed tar)
    and the error is kept in ``error``. ``read1`` returns what one step decompresses, so no data
    decompressed before the error is lost."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        if self.error is not None:
            return b""
        try:
            return self.inner.read1(size if size and size > 0 else 1 << 20)
        except STREAM_ERRORS as e:
            self.error = e
            return b""


@contextlib.contextmanager
def tar_stream(shard_path: str | Path) -> Iterator[tuple[tarfile.TarFile, Decompressed | None]]:
    """``(tar in stream mode, the decompressed reader or None)`` of one shard, compressed or not
    (the one rule of the module docstring); ``ShardReadError`` if no first header can be read."""
    with contextlib.ExitStack() as stack:
        kind = compression(shard_path)  # a missing file raises FileNotFoundError, as open() does
        raw = stack.enter_context(open(shard_path, "rb"))
        stream = Decompressed(stack.enter_context(_DECOMPRESSORS[kind](raw))) if kind else None
        try:
            tar = tarfile.open(fileobj=stream or raw, mode="r|", tarinfo=_EndTrackingTarInfo)
        except STREAM_ERRORS as e:
            cause = stream.error if stream is not None and stream.error is not None else e
            raise ShardReadError(shard_path, cause) from e
        stack.enter_context(tar)
        yield tar, stream


def drain(stream: Decompressed | None) -> BaseException | None:
    """Read a decompressed stream to its end; the error if it is cut or corrupt anywhere (the
    decompressor checks the stream's end: gzip its CRC and length), else None."""
    if stream is None:
        return None
    while stream.read(1 << 20):
        pass
    return stream.error


def ended_cleanly(tar: tarfile.TarFile) -> bool:
    return isinstance(getattr(tar, "end_header_error", None), tarfile.EOFHeaderError)


def _start_group(key: str, rows: dict[str, int]) -> RawSample:
    if key in rows:
        return RawSample(key, rows[key], problems=[NON_CONSECUTIVE_MEMBERS])
    rows[key] = len(rows)
    return RawSample(key, rows[key])


def _flag(sample: RawSample, problem: str) -> None:
    if problem not in sample.problems:
        sample.problems.append(problem)


def _add_member(sample: RawSample, ext: str, member: MemberRef) -> None:
    if ext in sample.members:
        _flag(sample, DUPLICATE_MEMBER)
        return
    sample.members[ext] = member


def iter_samples(shard_path: str | Path) -> Iterator[RawSample]:
    """Stream the samples of one shard in tar order (see the module docstring for failures)."""
    rows: dict[str, int] = {}
    current: RawSample | None = None
    complete = False
    with tar_stream(shard_path) as (tar, stream):
        seekable = stream is None  # offsets are file offsets only in an uncompressed tar
        while True:
            try:
                info = tar.next()
            except STREAM_ERRORS:
                break
            if info is None:
                complete = ended_cleanly(tar)
                break
            tar.members.clear()  # stream mode would otherwise keep every TarInfo of the shard
            if info.isdir():
                continue
            name, name_ok = safe_name(info.name)
            key, ext = split_member_name(name)
            if current is None or key != current.key:
                if current is not None:
                    yield current
                current = _start_group(key, rows)
            if not name_ok:
                _flag(current, BAD_MEMBER_NAME)
            if not info.isfile():  # never extracted, never followed
                _flag(current, LINK_MEMBER if info.issym() or info.islnk() else SPECIAL_MEMBER)
                continue
            try:
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
            except STREAM_ERRORS:
                break
            _add_member(current, ext, MemberRef(name, data, info.offset_data if seekable else None))
        if complete and drain(stream) is not None:
            complete = False
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
