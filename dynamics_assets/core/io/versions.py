"""Versioned, immutable artefacts with atomic commits.

An artefact (one stage's output, or one partition of it) lives under an *artefact root*::

    <root>/CURRENT                 the committed version readers use (one line: its id)
    <root>/versions/<vid>/         committed versions: immutable directories
    <root>/versions/<vid>/_version.json
    <root>/.staging/<uuid>/        in-progress writes (never read by a reader)
    <root>/.lock                   flock held by the writer from its start to its commit

**Writing.** ``with Artefact(root).write(refs=..., base=...) as staging:`` takes the lock
(a second writer of the same root waits, up to ``timeout`` seconds, then raises
``LockTimeout``), creates a fresh staging directory, optionally pre-populated with *hardlinks* of
the ``base`` version's files (incremental stages reuse unchanged files for free; writers must
replace a file by writing a new one and renaming it over the old name, which never modifies the
shared inode — ``io.atomic`` does exactly that), and yields it. On a clean exit the staging
directory is committed:

1. every file is fsynced and hashed (sha256; a file hardlinked from a version whose
   ``_version.json`` records its hash is not re-read);
2. the version id is the first 16 hex chars of sha256 over the sorted (relative path, file hash)
   pairs and the refs' version ids: the same content gives the same id;
3. ``_version.json`` (id, artefact name, created, refs, files) is written, and the staging
   directory is renamed to ``versions/<vid>`` — or dropped when that version already exists;
4. LAST, ``CURRENT`` is replaced atomically (``os.replace`` of an fsynced temporary file).

A crash at any point leaves ``CURRENT`` naming the old version (or the new, complete one): a
reader never sees a mix. On an exception the staging directory is deleted; after a SIGKILL it is
left behind and the next writer (holding the lock, so it knows the directory is dead) deletes it,
or adopts the newest one with ``resume=True`` (the embedding stage keeps its completed shards).

**Reading.** ``Artefact(root).current()`` is the committed version directory (None before the
first commit); ``resolve(path)`` accepts a root, a version directory or a plain directory.
Readers should resolve once and then only read inside that version directory.
``open_checked(path)`` is ``resolve`` for readers: it compares the version's files with its
``_version.json`` — always their sizes (a stat per file: a truncated, missing or added file), and
with ``hashed`` their sha256 (plans, small, are hashed whenever read; the embedding stage hashes a
shard before reusing it) — and raises ``DamagedArtefact`` naming the files, the artefact and the
version, and saying to re-materialise it. ``verify(version)`` hashes everything.

**Refs.** A version records the upstream versions it was computed from (``refs``: name -> version
directory, stored relative to the version directory). ``prune(data_root)`` keeps every CURRENT
version and everything reachable from one through refs (across artefacts), and deletes the other
versions and dead staging directories::

    python -m dynamics_assets.core.io.versions prune [--dry-run] DATA_ROOT

It deletes only what it proves unused: an artefact whose ``CURRENT`` does not name a committed
version (empty, garbage, a missing id; or versions without ``CURRENT``) is an error naming it,
nothing of it is deleted, its versions count as in use (so what they reference is kept), and the
command exits with status 2.

**Pool version.** The clusters version (its refs pin the manifest and the embeddings versions) is
the *pool version*. A plan records it in ``plan.json`` (``pool_version``); ``require_same_pool``
refuses to use a plan drawn on another pool (positions into the pool mean nothing there).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

VERSION_FILE = "_version.json"
CURRENT = "CURRENT"
VERSIONS = "versions"
STAGING = ".staging"
LOCK = ".lock"
ID_LENGTH = 16
DEFAULT_TIMEOUT_S = float(os.environ.get("DYNAMICS_LOCK_TIMEOUT_S", 3600))


class LockTimeout(TimeoutError):
    """Another writer held the artefact's lock for longer than the timeout."""


class StalePlanError(ValueError):
    """A plan is used against a pool version other than the one it was drawn on."""


class NotAVersion(ValueError):
    """A path given as a ref is not a committed version directory."""


# ----------------------------------------------------------------------------- small helpers


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_and_fsync(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
        os.fsync(f.fileno())
    return digest.hexdigest()


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> Iterator[Path]:
    """Regular files under ``directory`` (relative paths, sorted), ``_version.json`` excluded."""
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in sorted(filenames):
            rel = Path(dirpath, name).relative_to(directory)
            if rel.as_posix() != VERSION_FILE:
                yield rel


def _remove_hidden(directory: Path) -> None:
    """Delete every entry whose name starts with '.' (temporaries of interrupted atomic writes)."""
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in [d for d in dirnames if d.startswith(".")]:
            shutil.rmtree(Path(dirpath, name), ignore_errors=True)
            dirnames.remove(name)
        for name in filenames:
            if name.startswith("."):
                Path(dirpath, name).unlink(missing_ok=True)


def is_version_dir(path: str | os.PathLike | None) -> bool:
    """True for a committed version directory (``<root>/versions/<vid>`` with its ``_version.json``)."""
    if path is None:
        return False
    p = Path(path)
    return p.parent.name == VERSIONS and (p / VERSION_FILE).is_file()


def version_info(version_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``_version.json`` of a committed version."""
    return json.loads((Path(version_dir) / VERSION_FILE).read_text())


def version_id(path: str | os.PathLike) -> str:
    """The id of a version directory, or of the current version of an artefact root."""
    return resolve(path, required=True).name


def resolve(path: str | os.PathLike, *, required: bool = False) -> Path:
    """The directory a reader should read for ``path``: an artefact root gives its current
    version, a version directory (or any plain directory, e.g. a test fixture) itself.
    With ``required``, anything but a committed version raises."""
    p = Path(path)
    if (p / CURRENT).is_file():
        current = Artefact(p).current()
        if current is None:
            raise FileNotFoundError(f"{p}: CURRENT names a version that does not exist")
        return current
    if required and not is_version_dir(p):
        raise NotAVersion(f"{p}: not a committed artefact version nor an artefact root with a CURRENT version")
    return p


def pinned(**paths: str | os.PathLike | None) -> dict[str, Path]:
    """Refs for ``Artefact.write``: the given paths that are committed versions (roots resolved to
    their current version); plain directories and None are left out (nothing to pin)."""
    out = {}
    for name, path in paths.items():
        if path is None:
            continue
        p = resolve(path)
        if is_version_dir(p):
            out[name] = p
    return out


class DamagedArtefact(ValueError):
    """A committed version's files differ from its ``_version.json`` (a file truncated, missing,
    added, or edited in place): the error names the files, the artefact and the version."""


def damaged_files(version_dir: str | os.PathLike, *, hashed: bool | Iterable[str] = False) -> list[str]:
    """What is wrong with a committed version's files, one line each naming the file (empty: intact).

    Always a stat per file: a recorded file missing or of another size, a file not recorded
    (hidden temporaries aside). ``hashed``: also the sha256 of every recorded file (True) or of
    the named relative paths — a full read, for small files or before reuse."""
    d = Path(version_dir)
    try:
        recorded = version_info(d)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{d / VERSION_FILE}: unreadable ({e})"]
    present = _sizes(str(d))
    problems = []
    for rel, rec in recorded.items():
        size = present.get(rel)
        if size is None:
            problems.append(f"{d / rel}: missing")
        elif size != rec["size"]:
            problems.append(f"{d / rel}: {size} bytes, its version recorded {rec['size']}")
    problems += [f"{d / rel}: not a file of this version (added after its commit)"
                 for rel in sorted(present) if rel not in recorded]
    to_hash = recorded if hashed is True else ([] if hashed is False else list(hashed))
    for rel in to_hash:
        if rel in recorded and present.get(rel) == recorded[rel]["size"] and _sha256(d / rel) != recorded[rel]["sha256"]:
            problems.append(f"{d / rel}: content differs from its recorded sha256 (edited in place)")
    return problems


def _sizes(directory: str) -> dict[str, int]:
    """Relative path -> size of the files under a version directory (``_version.json`` and hidden
    entries — temporaries of interrupted writes — left out): one scandir per directory."""
    out: dict[str, int] = {}
    stack = [("", directory)]
    while stack:
        prefix, path = stack.pop()
        with os.scandir(path) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                rel = prefix + e.name
                if e.is_dir():
                    stack.append((rel + "/", e.path))
                elif rel != VERSION_FILE:
                    with contextlib.suppress(FileNotFoundError):
                        out[rel] = e.stat().st_size
    return out


def open_checked(path: str | os.PathLike, *, required: bool = False, hashed: bool | Iterable[str] = False) -> Path:
    """``resolve(path)`` for a reader, checked: a committed version's file sizes (a stat per
    file) and, with ``hashed``, the sha256 of all (True) or the named files must match its
    ``_version.json``, else ``DamagedArtefact`` names the files, the artefact and the version and
    says to re-materialise it. A plain directory (a test fixture, a staging directory) is returned
    unchecked."""
    d = resolve(path, required=required)
    if is_version_dir(d) and (problems := damaged_files(d, hashed=hashed)):
        raise DamagedArtefact(damage_message(d, problems))
    return d


def damage_message(version_dir: Path, problems: list[str]) -> str:
    try:
        name = version_info(version_dir).get("artefact") or version_dir.parent.parent.name
    except (OSError, ValueError):
        name = version_dir.parent.parent.name
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return (f"{name} version {version_dir.name} is damaged: {shown}. Committed files never change, so these "
            f"were altered outside the pipeline: re-materialise {name} (the artefact at "
            f"{version_dir.parent.parent}) to write a sound version")


def verify(version_dir: str | os.PathLike) -> list[str]:
    """Files of a version whose content differs from ``_version.json`` (missing/extra included)."""
    d = Path(version_dir)
    recorded = version_info(d)["files"]
    present = {rel.as_posix() for rel in _files(d)}
    problems = sorted(set(recorded) ^ present)
    for rel in sorted(set(recorded) & present):
        if _sha256_and_fsync(d / rel) != recorded[rel]["sha256"]:
            problems.append(rel)
    return problems


# ----------------------------------------------------------------------------- the lock


@contextlib.contextmanager
def _locked(lock_path: Path, timeout: float, what: str) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    raise LockTimeout(f"{what}: another writer (pid {holder}) holds {lock_path}; gave up after "
                                      f"{timeout:g} s. Wait for it to finish, or if no writer is running, retry "
                                      f"(a dead process releases its lock).") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _try_lock(lock_path: Path) -> int | None:
    """A held lock's fd, or None when another process holds it."""
    if not lock_path.parent.is_dir():
        return None
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


# ----------------------------------------------------------------------------- writing


@dataclass
class Staging:
    """The directory a writer fills (``staging / "name"`` is a Path); after the ``with`` block,
    ``version_dir`` / ``version_id`` name the committed version and ``reused`` tells whether an
    identical version already existed."""

    path: Path
    refs: dict[str, Path] = field(default_factory=dict)
    resumed: bool = False  # the directory was adopted from an interrupted writer
    version_dir: Path | None = None
    version_id: str | None = None
    reused: bool = False

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def __fspath__(self) -> str:
        return str(self.path)


class Artefact:
    """One artefact root (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, name: str | None = None) -> None:
        self.root = Path(root)
        self.name = name or self.root.name

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS

    @property
    def staging_dir(self) -> Path:
        return self.root / STAGING

    def current_id(self) -> str | None:
        try:
            vid = (self.root / CURRENT).read_bytes().decode("utf-8", errors="replace").strip()
        except FileNotFoundError:
            return None
        return vid or None

    def current(self) -> Path | None:
        """The committed version directory CURRENT names (None before the first commit, and when
        CURRENT does not name one of this root's committed versions)."""
        vid = self.current_id()
        if vid is None or not vid.isprintable() or "/" in vid or "\\" in vid or vid in (".", ".."):
            return None
        d = self.versions_dir / vid
        return d if (d / VERSION_FILE).is_file() else None

    def version(self, vid: str) -> Path:
        d = self.versions_dir / vid
        if not (d / VERSION_FILE).is_file():
            raise FileNotFoundError(f"{self.root}: no committed version {vid}")
        return d

    def versions(self) -> list[Path]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(d for d in self.versions_dir.iterdir() if (d / VERSION_FILE).is_file())

    @contextlib.contextmanager
    def write(self, *, refs: Mapping[str, str | os.PathLike] | None = None, base: str | os.PathLike | None = None,
              resume: bool = False, keep_on_error: bool = False, timeout: float | None = None,
              meta: Mapping[str, Any] | None = None) -> Iterator[Staging]:
        """Lock, stage, commit (see the module docstring). ``refs``: name -> committed version
        directory (see ``pinned``); ``base``: a version whose files are hardlinked into the new
        staging directory; ``resume``: adopt the newest staging directory an interrupted writer
        left (its hidden temporaries removed) instead of starting afresh; ``keep_on_error``: an
        exception leaves the staging directory for a later ``resume`` (default: it is deleted,
        as it always is when not committed and not resumed); ``meta``: extra fields
        for ``_version.json`` (not part of the id). More refs may be added to ``staging.refs``
        before the block ends."""
        refs = {name: resolve(path, required=True) for name, path in (refs or {}).items()}
        base_dir = None if base is None else resolve(base, required=True)
        with _locked(self.root / LOCK, DEFAULT_TIMEOUT_S if timeout is None else timeout, str(self.root)):
            staging = self._prepare(base_dir, resume)
            staging.refs.update(refs)
            try:
                yield staging
                self._commit(staging, base_dir, dict(meta or {}))
            except BaseException:
                if staging.version_dir is None and not keep_on_error:
                    shutil.rmtree(staging.path, ignore_errors=True)
                raise

    def _prepare(self, base: Path | None, resume: bool) -> Staging:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        stale = sorted((d for d in self.staging_dir.iterdir()), key=lambda d: d.stat().st_mtime)
        adopted = stale.pop() if resume and stale and stale[-1].is_dir() else None
        for d in stale:  # we hold the lock: whoever made these is dead
            shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
        if adopted is not None:
            _remove_hidden(adopted)
            (adopted / VERSION_FILE).unlink(missing_ok=True)
            os.utime(adopted)
            return Staging(adopted, resumed=True)
        path = self.staging_dir / uuid.uuid4().hex
        path.mkdir()
        if base is not None:
            for rel in _files(base):
                (path / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(base / rel, path / rel)
        return Staging(path)

    def _known_hashes(self, base: Path | None) -> dict[tuple[int, int], str]:
        """(device, inode) -> sha256 of the files of ``base`` and of the current version."""
        known = {}
        for d in {p for p in (base, self.current()) if p is not None}:
            try:
                files = version_info(d)["files"]
            except (OSError, ValueError, KeyError):
                continue
            for rel, rec in files.items():
                with contextlib.suppress(OSError):
                    st = os.stat(d / rel)
                    if st.st_size == rec["size"]:
                        known[(st.st_dev, st.st_ino)] = rec["sha256"]
        return known

    def _commit(self, staging: Staging, base: Path | None, meta: dict[str, Any]) -> None:
        path = staging.path
        _remove_hidden(path)
        known = self._known_hashes(base)
        files = {}
        for rel in _files(path):
            st = os.stat(path / rel)
            sha = known.get((st.st_dev, st.st_ino))
            if sha is None:
                sha = _sha256_and_fsync(path / rel)
            files[rel.as_posix()] = {"sha256": sha, "size": st.st_size}
        ref_ids = {name: ref.name for name, ref in sorted(staging.refs.items())}
        digest = hashlib.sha256(json.dumps({"files": [[r, f["sha256"]] for r, f in files.items()],
                                            "refs": ref_ids}, sort_keys=True).encode())
        vid = digest.hexdigest()[:ID_LENGTH]
        target = self.versions_dir / vid
        info = {
            "id": vid, "artefact": self.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "refs": {name: {"id": ref.name, "path": os.path.relpath(ref, target)}
                     for name, ref in sorted(staging.refs.items())},
            "files": files, **({"meta": meta} if meta else {}),
        }
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        damaged = None
        if (target / VERSION_FILE).is_file() and _intact(target, path, files):
            shutil.rmtree(path)
            staging.reused = True
        else:
            if target.exists():  # damaged, or half-deleted by an interrupted prune: replace it
                damaged = self.staging_dir / f"{uuid.uuid4().hex}.damaged"
                os.rename(target, damaged)
            version_json = path / VERSION_FILE
            version_json.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            _sha256_and_fsync(version_json)
            for dirpath, _, _ in os.walk(path):
                _fsync_dir(Path(dirpath))
            os.rename(path, target)
            _fsync_dir(self.versions_dir)
            _fsync_dir(self.staging_dir)
        self._set_current(vid)
        if damaged is not None:
            shutil.rmtree(damaged, ignore_errors=True)
        staging.path, staging.version_dir, staging.version_id = target, target, vid

    def _set_current(self, vid: str) -> None:
        tmp = self.root / f".{CURRENT}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            f.write(vid + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / CURRENT)
        _fsync_dir(self.root)


def _intact(version: Path, staging: Path, files: dict[str, dict[str, Any]]) -> bool:
    """Whether an existing version holds exactly the staged files. A file that is the same inode
    as the staged one is trivially equal; any other is re-hashed (committed versions are never
    modified, so this only catches damage, at the cost of hashing what was not hardlinked)."""
    if {rel.as_posix() for rel in _files(version)} != set(files):
        return False
    for rel, rec in files.items():
        a, b = os.stat(version / rel), os.stat(staging / rel)
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            continue
        if a.st_size != rec["size"] or _sha256_and_fsync(version / rel) != rec["sha256"]:
            return False
    return True


# ----------------------------------------------------------------------------- pool version


def require_same_pool(plan_meta_or_dir: Mapping[str, Any] | str | os.PathLike, pool_version: str | os.PathLike,
                      what: str = "training") -> None:
    """Raise ``StalePlanError`` unless the plan was drawn on ``pool_version`` (a version id, or
    the clusters version directory / root)."""
    if isinstance(plan_meta_or_dir, Mapping):
        meta, where = plan_meta_or_dir, str(plan_meta_or_dir.get("plan_dir", "<in memory>"))
    else:
        where = str(resolve(plan_meta_or_dir))
        meta = json.loads((Path(where) / "plan.json").read_text())
    expected = _vid(pool_version)
    drawn_on = meta.get("pool_version")
    if drawn_on != expected:
        raise StalePlanError(f"plan {where} was drawn on pool version {drawn_on or '<unrecorded>'}; this {what} "
                             f"reads pool version {expected} — redraw the plan")


def _vid(version: str | os.PathLike) -> str:
    p = Path(version)
    if (p / CURRENT).is_file() or is_version_dir(p):
        return version_id(p)
    return str(version)


# ----------------------------------------------------------------------------- prune


@dataclass
class PruneReport:
    kept: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)  # versions and staging directories
    skipped_locked: list[Path] = field(default_factory=list)  # roots a writer holds: left alone
    bytes_freed: int = 0
    # artefacts whose use cannot be proved (a CURRENT that names no committed version, versions
    # without a CURRENT, an unreadable _version.json): nothing of theirs is deleted, and neither is
    # anything their versions reference; one line each, naming the artefact and what to do
    problems: list[str] = field(default_factory=list)
    unresolved: list[Path] = field(default_factory=list)  # their roots


def artefact_roots(data_root: str | os.PathLike) -> list[Path]:
    """Every artefact root under ``data_root`` (directories with ``versions/``, ``CURRENT`` or
    ``.staging/``); the search does not descend into a root."""
    roots = []
    for dirpath, dirnames, filenames in os.walk(data_root):
        if VERSIONS in dirnames or CURRENT in filenames or STAGING in dirnames:
            roots.append(Path(dirpath))
            dirnames.clear()
        else:
            dirnames.sort()
    return sorted(roots)


def _unresolved_current(root: Path) -> str | None:
    """Why the versions in use of ``root`` cannot be known, or None when they can (CURRENT names a
    committed version, or the root has neither CURRENT nor a committed version)."""
    art = Artefact(root)
    committed = [v.name for v in art.versions()]
    listing = (f"its committed versions: {', '.join(committed[:8])}{' …' if len(committed) > 8 else ''}"
               if committed else "it has no committed version")
    fix = (f"write the id of the version in use into {root / CURRENT} (or re-materialise the artefact), "
           "then prune again")
    if not (root / CURRENT).exists():
        if not committed:
            return None
        return f"{root}: no CURRENT file, but {listing}; nothing of it was deleted — {fix}"
    if not (root / CURRENT).is_file():
        return f"{root}: CURRENT is not a file; {listing}; nothing of it was deleted — {fix}"
    if art.current() is not None:
        return None
    vid = art.current_id()
    what = ("is empty" if vid is None
            else f"names {vid[:40]!r}, which is not a committed version of it")
    return f"{root}: CURRENT {what}; {listing}; nothing of it was deleted — {fix}"


def prune(data_root: str | os.PathLike, *, dry_run: bool = False) -> PruneReport:
    """Delete what is provably unused: versions not reachable from a CURRENT (through refs, across
    artefacts) and dead staging directories. Roots whose lock a writer holds are left untouched
    (their CURRENT and refs still protect what they use). A root whose CURRENT does not resolve
    (empty, garbage, an id with no committed version; or versions without a CURRENT) is a
    *problem* (``report.problems``): nothing of it is deleted, and all its versions count as in
    use, so what they reference is kept too. A version whose ``_version.json`` cannot be read
    has unknown refs: then nothing at all is deleted. Versions a running reader pinned but nothing
    references any more are deleted: prune when no run is reading superseded versions."""
    report = PruneReport()
    held: dict[Path, int] = {}
    try:
        roots = artefact_roots(data_root)
        for root in roots:
            fd = _try_lock(root / LOCK)
            if fd is None:
                report.skipped_locked.append(root)
            else:
                held[root] = fd
        keep: set[Path] = set()
        todo = [c.resolve() for r in roots if (c := Artefact(r).current()) is not None]
        for root in held:
            if (problem := _unresolved_current(root)) is not None:
                report.problems.append(problem)
                report.unresolved.append(root)
        for root in report.skipped_locked + report.unresolved:  # be safe: everything of these stays
            todo += [v.resolve() for v in Artefact(root).versions()]
        refs_unknown = False
        while todo:
            v = todo.pop()
            if v in keep or not (v / VERSION_FILE).is_file():
                continue
            keep.add(v)
            try:
                refs = version_info(v).get("refs", {})
                targets = [(v / ref["path"]).resolve() for ref in refs.values()]
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                report.problems.append(f"{v / VERSION_FILE}: unreadable ({e}), so the versions it references are "
                                       "unknown; nothing was deleted — re-materialise that artefact, then prune again")
                refs_unknown = True
                continue
            todo += targets
        doomed: list[Path] = []
        for root in held:
            art = Artefact(root)
            protected = refs_unknown or root in report.unresolved
            for v in art.versions_dir.iterdir() if art.versions_dir.is_dir() else []:
                (report.kept if protected or v.resolve() in keep else doomed).append(v)
            if protected:
                continue
            if art.staging_dir.is_dir():
                doomed += sorted(art.staging_dir.iterdir())
            doomed += sorted(root.glob(f".{CURRENT}.*.tmp"))
        report.kept.sort()
        report.removed = sorted(doomed)
        report.bytes_freed = _bytes_freed(doomed)
        if not dry_run:
            for d in doomed:
                shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
    finally:
        for fd in held.values():
            os.close(fd)
    return report


def _bytes_freed(paths: list[Path]) -> int:
    """Bytes of the inodes whose every link lies under ``paths`` (hardlinks shared with kept
    versions free nothing)."""
    seen: dict[tuple[int, int], list] = {}
    for top in paths:
        walk = os.walk(top) if top.is_dir() else [(str(top.parent), [], [top.name])]
        for dirpath, _, filenames in walk:
            for name in filenames:
                with contextlib.suppress(OSError):
                    st = os.lstat(Path(dirpath, name))
                    entry = seen.setdefault((st.st_dev, st.st_ino), [st.st_nlink, 0, st.st_size])
                    entry[1] += 1
    return sum(size for nlink, links, size in seen.values() if links >= nlink)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynamics_assets.core.io.versions")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune", help="delete artefact versions nothing current uses")
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    p.add_argument("data_root")
    args = parser.parse_args(argv)
    report = prune(args.data_root, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in report.kept:
        print(f"keep    {path}")
    for path in report.removed:
        print(f"{'remove ' if args.dry_run else 'removed'} {path}")
    for path in report.skipped_locked:
        print(f"busy    {path} (a writer holds its lock; left alone)")
    print(f"{verb} {len(report.removed)} entries, {report.bytes_freed} bytes freed; kept {len(report.kept)} versions")
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    if report.problems:
        print(f"prune: {len(report.problems)} problem(s): what they concern was kept; exit status 2",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
