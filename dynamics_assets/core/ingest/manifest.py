"""raw_pairs manifest: one parquet row per webdataset sample, valid pairs vs. quarantine.

``read_shard_manifest`` streams one tar shard (``webdataset.iter_samples``), decodes each
image with Pillow, and returns one row per sample key (``MANIFEST_SCHEMA``) with
``status`` 'ok' or 'quarantined' and, when quarantined, exactly one ``reason`` from
``REASONS`` (the first that applies, in that order):

=========================  =================================================================
unreadable_shard           the file is not a readable tar at all, or reading it failed in an
                           unexpected way (``detail`` has the error); the shard's only row,
                           ``key`` null (one bad file must not kill a run over 1000 shards)
truncated_tar              tail record: the tar is cut short / corrupt here; its samples
                           after this point are lost (``key`` null if none was started)
bad_member_name            a member name is not valid UTF-8 (names are stored escaped)
link_member                a member is a symbolic or hard link (never extracted or followed)
special_member             a member is a device or a fifo
non_consecutive_members    the key's members are split by another key's (webdataset order)
duplicate_member           the key has the same extension twice
missing_image              no jpg/jpeg/png/webp member
multiple_images            more than one image member
too_large                  the image header says more pixels than ``max_pixels`` (refused
                           before decoding; default ``images.MAX_PIXELS``, 64 Mi px)
decompression_bomb         Pillow refuses it as a decompression bomb (its warning made an error)
corrupt_image              Pillow cannot open or fully decode the image
missing_caption            no txt member
bad_caption                the caption is not UTF-8
empty_caption              the caption is empty after stripping whitespace
bad_json                   the json member is not a UTF-8 JSON object
exact_duplicate            same image bytes and caption as an earlier ok row
duplicate_sample_id        a different pair with the ``sample_id`` of an earlier ok row
unreadable_part            (precomputed pools) the part's embeddings are missing, unreadable or
                           not row-aligned with its metadata (``detail`` says which)
bad_uid                    (precomputed pools) the uid is missing or not 32 hex characters
invalid_embedding          (precomputed pools) a non-finite or zero image or text embedding
=========================  =================================================================

``decode`` (the manifest setting): ``full`` (default) opens and fully decodes every image;
``header`` reads only the image header (format, width, height, pixel count: ``Image.open`` without
``load()``), which is several times faster (``bench/bench_manifest.py``). In both modes the pixel
cap (``too_large``) and Pillow's bomb warning are decided from the header, and an image whose header
does not parse is ``corrupt_image``. What only a full decode catches (data truncated or corrupt
*after* a valid header) is accepted as ok by a ``header`` manifest; the embedding step decodes every
ok image and records such an image as ``corrupt_image`` there (``embed.encode``: a zero image row
listed under ``undecodable_rows``, quarantined by the clustering step with that reason, so no plan
samples it). The manifest records which mode made it; a ``full`` build reads a header-only
manifest's shard again.

Per-shard failures never stop other shards: an unexpected exception while reading one shard
becomes that shard's ``unreadable_shard`` row (the error in ``detail``; the manifest is marked so
that the next build reads the shard again). ``detail`` also says why for ``too_large``,
``decompression_bomb`` and ``corrupt_image``. Compressed shards follow ``webdataset``'s one rule.

``sample_id`` is the sample's json ``uid`` when it is 32 hex characters (lowercased), else
``sha256(image bytes + b"\\0" + stripped caption UTF-8)[:32]`` — independent of the key and
position, so the same pair gets the same id wherever img2dataset put it.

Duplicates (one DuckDB query, ``_DUPLICATES_SQL``, run on each new shard and on the pool):
in pool order (shards by name, then row) the first ok row of each (``image_sha256``,
``caption``) stays ok and later ones become ``exact_duplicate`` with ``duplicate_of`` = the
kept row's ``sample_id`` (img2dataset gives a re-crawled copy its own uid, so content, not the
id, decides); among the survivors a repeated ``sample_id`` becomes ``duplicate_sample_id``, so
the ``sample_id`` of ok rows is unique and can key every later stage.

``build_manifest`` commits one version (``io.versions``) of the artefact root ``out_dir``
holding ``<shard_stem>.parquet`` per shard and ``_summary.json``: the previous version's
manifests are hardlinked into the staging directory (a shard whose manifest records the same
source size and mtime is not re-read), the duplicate query runs over every manifest there, the
shards it changes are rewritten (a new file renamed over the link: the old version is untouched)
and the summary written; then the version is committed. Readers are given the version directory,
so no temporary file of a write in progress is ever next to the manifests they glob. The pool order of ok rows (``ok_rows``) defines the global sample index
of a valid pair.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from dynamics_assets.core.engine import Engine, resolve as resolve_engine
from dynamics_assets.core.ingest import images
from dynamics_assets.core.ingest.images import MAX_PIXELS
from dynamics_assets.core.io import versions
from dynamics_assets.core.io.atomic import write_json, write_parquet
from dynamics_assets.core.io.webdataset import IMAGE_EXTS, MemberRef, RawSample, ShardReadError, iter_samples

OK, QUARANTINED = "ok", "quarantined"
DECODE_MODES = ("full", "header")
Decode = Literal["full", "header"]
REASONS = (
    "unreadable_shard",
    "truncated_tar",
    "bad_member_name",
    "link_member",
    "special_member",
    "non_consecutive_members",
    "duplicate_member",
    "missing_image",
    "multiple_images",
    "too_large",
    "decompression_bomb",
    "corrupt_image",
    "missing_caption",
    "bad_caption",
    "empty_caption",
    "bad_json",
    "exact_duplicate",
    "duplicate_sample_id",
    # Pools that ship precomputed embeddings (``ingest.precomputed``) only:
    "unreadable_part",
    "bad_uid",
    "invalid_embedding",
)

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string()),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("row", pa.int32(), nullable=False),
        pa.field("image_member", pa.string()),
        pa.field("text_member", pa.string()),
        pa.field("json_member", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("pixels", pa.int64()),  # width * height from the header (also when refused)
        pa.field("image_sha256", pa.string()),
        pa.field("meta_json", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("duplicate_of", pa.string()),
        pa.field("image_offset", pa.int64()),  # byte offset / size of the image data in the tar
        pa.field("image_size", pa.int64()),    # (uncompressed tars): loaders seek straight to it
        pa.field("detail", pa.string()),  # why, for some reasons (error text, pixel count)
    ]
)
OK_ROW_COLUMNS = ("sample_id", "shard", "row", "key", "image_member", "caption")
METADATA_KEY = b"dynamics_assets.manifest"
FORMAT_VERSION = 3
SUMMARY_NAME = "_summary.json"

_UID = re.compile(r"[0-9a-fA-F]{32}")


# ----------------------------------------------------------------------------- one sample


def content_sample_id(image: bytes, caption: str) -> str:
    """First 32 hex chars of sha256(image bytes + b"\\0" + caption UTF-8)."""
    return hashlib.sha256(image + b"\0" + caption.encode("utf-8")).hexdigest()[:32]


def _caption(member: MemberRef | None) -> tuple[str | None, str | None]:
    """(stripped caption, problem)."""
    if member is None:
        return None, "missing_caption"
    try:
        text = member.data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, "bad_caption"
    return text, None if text else "empty_caption"


def _meta(member: MemberRef | None) -> tuple[str | None, str | None, str | None]:
    """(raw json text, valid uid lowercased, problem)."""
    if member is None:
        return None, None, None
    try:
        text = member.data.decode("utf-8")
        obj = json.loads(text)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both are ValueErrors
        return None, None, "bad_json"
    if not isinstance(obj, dict):
        return text, None, "bad_json"
    uid = obj.get("uid")
    valid = isinstance(uid, str) and _UID.fullmatch(uid) is not None
    return text, uid.lower() if valid else None, None


def _first_reason(problems: Iterable[str]) -> str | None:
    found = set(problems)
    return next((r for r in REASONS if r in found), None)


def _name(member: MemberRef | None) -> str | None:
    return None if member is None else member.name


def _describe(sample: RawSample, shard: str, verify_images: bool, max_pixels: int | None) -> dict[str, Any]:
    """One manifest row for one sample."""
    problems = list(sample.problems)
    found = [m for ext, m in sample.members.items() if ext in IMAGE_EXTS]
    image = found[0] if found else None
    if not found:
        problems.append("missing_image")
    elif len(found) > 1:
        problems.append("multiple_images")
    facts = images.inspect(image.data, verify=verify_images, max_pixels=max_pixels) if image else None
    if facts and facts.problem:
        problems.append(facts.problem)
    caption, caption_problem = _caption(sample.members.get("txt"))
    meta_json, uid, meta_problem = _meta(sample.members.get("json"))
    problems += [p for p in (caption_problem, meta_problem) if p]
    if uid is None and image is not None and caption is not None:
        uid = content_sample_id(image.data, caption)
    reason = _first_reason(problems)
    detail = facts.detail if facts and reason == facts.problem else None
    return {
        "sample_id": uid,
        "shard": shard,
        "key": sample.key,
        "row": sample.row,
        "image_member": _name(image),
        "text_member": _name(sample.members.get("txt")),
        "json_member": _name(sample.members.get("json")),
        "caption": caption,
        "width": facts.width if facts else None,
        "height": facts.height if facts else None,
        "pixels": facts.pixels if facts else None,
        "image_sha256": hashlib.sha256(image.data).hexdigest() if image else None,
        "image_offset": image.offset if image else None,
        "image_size": len(image.data) if image and image.offset is not None else None,
        "meta_json": meta_json,
        "status": QUARANTINED if reason else OK,
        "reason": reason,
        "duplicate_of": None,
        "detail": detail,
    }


def _quarantine(row: dict[str, Any], problems: Iterable[str]) -> None:
    """Add problems to an existing row; its reason becomes the first applicable one."""
    reason = _first_reason([*problems, *([row["reason"]] if row["reason"] else [])])
    if reason != row["reason"]:
        row["detail"] = None  # the detail explained the reason it had
    row["reason"], row["status"] = reason, QUARANTINED


# ----------------------------------------------------------------------------- one shard


def _source_metadata(path: Path, verify_images: bool, max_pixels: int | None,
                     unexpected_error: bool = False) -> dict[bytes, bytes]:
    st = path.stat()
    info = {
        "format_version": FORMAT_VERSION,
        "shard": path.name,
        "source_size": st.st_size,
        "source_mtime_ns": st.st_mtime_ns,
        "verify_images": verify_images,
        "max_pixels": max_pixels,
    }
    if unexpected_error:
        info["unexpected_error"] = True  # never reused: the next build reads the shard again
    return {METADATA_KEY: json.dumps(info, sort_keys=True).encode()}


def _unreadable_row(shard: str, detail: str) -> dict[str, Any]:
    row = {name: None for name in MANIFEST_SCHEMA.names}
    row.update(shard=shard, row=0, status=QUARANTINED, reason="unreadable_shard", detail=detail)
    return row


def _read_rows(path: Path, verify_images: bool, max_pixels: int | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for sample in iter_samples(path):
        if sample.row < len(rows):  # a non-consecutive key seen again: still one row
            _quarantine(rows[sample.row], sample.problems)
        else:
            rows.append(_describe(sample, path.name, verify_images, max_pixels))
    return rows


def decode_verifies(decode: Decode) -> bool:
    """``decode`` setting -> whether images are fully decoded (``full``) or only their header read."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    return decode == "full"


def read_shard_manifest(shard_path: str | Path, *, verify_images: bool = True,
                        max_pixels: int | None = MAX_PIXELS, decode: Decode | None = None) -> pa.Table:
    """Manifest of one shard: one row per sample key (plus a truncated tail record).

    The source size and mtime (taken before reading) are stored in the schema metadata
    under ``METADATA_KEY``. A file that is not a tar, or whose reading fails unexpectedly,
    gives one ``unreadable_shard`` row with the error in ``detail``; images with more than
    ``max_pixels`` pixels (None: no cap) are ``too_large``. ``decode`` ("full" | "header"), when
    given, overrides ``verify_images`` (see the module docstring).
    """
    if decode is not None:
        verify_images = decode_verifies(decode)
    path = Path(shard_path)
    metadata = _source_metadata(path, verify_images, max_pixels)
    try:
        rows = _read_rows(path, verify_images, max_pixels)
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA.with_metadata(metadata))
    except ShardReadError as err:
        table = pa.Table.from_pylist([_unreadable_row(path.name, str(err))],
                                     schema=MANIFEST_SCHEMA.with_metadata(metadata))
    except Exception as err:  # one shard's failure must not stop the others: record it, name it
        table = failed_shard_manifest(path, err, verify_images=verify_images, max_pixels=max_pixels)
    with duckdb.connect() as con:
        con.register("manifest", table)
        changes = _duplicate_changes(con).get(path.name, {})
    return _apply_changes(table, changes)


def failed_shard_manifest(shard_path: str | Path, err: BaseException, *, verify_images: bool = True,
                          max_pixels: int | None = MAX_PIXELS) -> pa.Table:
    """The one-row ``unreadable_shard`` manifest of a shard whose reading failed unexpectedly (an
    exception inside the reader, or the engine's worker died on it); marked so that the next build
    reads the shard again."""
    path = Path(shard_path)
    metadata = _source_metadata(path, verify_images, max_pixels, unexpected_error=True)
    detail = f"{path}: {type(err).__name__}: {err}"
    return pa.Table.from_pylist([_unreadable_row(path.name, detail)], schema=MANIFEST_SCHEMA.with_metadata(metadata))


def manifest_info(manifest_path: str | Path) -> dict[str, Any]:
    """The source record stored in a manifest's schema metadata (raises naming the file)."""
    metadata = pq.read_schema(manifest_path).metadata or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{manifest_path}: not a raw_pairs manifest (no {METADATA_KEY.decode()})")
    return json.loads(metadata[METADATA_KEY])


def _intact(manifest: Path, staging: Path, recorded: dict) -> bool:
    """A manifest carried over from the previous version is reused only when its bytes are the ones
    that version recorded (sha256): one truncated or edited in place is read again from its shard,
    not carried into every later version."""
    rec = recorded.get(manifest.relative_to(staging).as_posix())
    if rec is None:
        return False
    if manifest.stat().st_size != rec.get("size"):
        return False
    from dynamics_assets.core.io.hashing import file_sha256

    return file_sha256(manifest) == rec.get("sha256")


def _is_current(manifest: Path, shard: Path, verify_images: bool, max_pixels: int | None) -> bool:
    if not manifest.exists():
        return False
    try:
        info = manifest_info(manifest)
    except (ValueError, OSError, pa.ArrowException):
        return False
    st = shard.stat()
    return (
        info.get("format_version") == FORMAT_VERSION
        and info.get("shard") == shard.name
        and info.get("source_size") == st.st_size
        and info.get("source_mtime_ns") == st.st_mtime_ns
        and bool(info.get("verify_images") or not verify_images)
        and info.get("max_pixels") == max_pixels
        and not info.get("unexpected_error")
    )


# ----------------------------------------------------------------------------- the pool


@dataclass(frozen=True)
class ShardCounts:
    shard: str
    rows: int
    ok: int
    quarantined: int
    by_reason: dict[str, int]


@dataclass(frozen=True)
class ManifestSummary:
    total: int
    ok: int
    quarantined: int
    by_reason: dict[str, int]
    per_shard: list[ShardCounts]  # pool order
    empty_shards: list[str]  # valid tars with no member: zero-row manifests
    # What this call did (not written to _summary.json, which depends on the pool only):
    read_shards: list[str] = dataclasses.field(default_factory=list)
    reused_shards: list[str] = dataclasses.field(default_factory=list)
    rewritten_shards: list[str] = dataclasses.field(default_factory=list)
    dropped_shards: list[str] = dataclasses.field(default_factory=list)
    version_dir: Path | None = None  # the committed manifest version (give this to readers)
    version_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for run_only in ("read_shards", "reused_shards", "rewritten_shards", "dropped_shards", "version_dir",
                         "version_id"):
            del out[run_only]
        return out


def manifest_files(manifest_dir: str | Path) -> list[tuple[str, Path]]:
    """``(shard name, manifest path)`` of every manifest in the directory (a version directory;
    an artefact root reads its current version), in pool order."""
    found = [
        (manifest_info(p)["shard"], p)
        for p in versions.open_checked(manifest_dir).glob("*.parquet")  # sizes checked
        if not p.name.startswith(".")
    ]
    found.sort()
    names = [shard for shard, _ in found]
    if len(set(names)) != len(names):
        raise ValueError(f"{manifest_dir}: several manifests claim the same shard")
    return found


def _manifest_targets(shard_paths: Iterable[str | Path], out_dir: Path) -> list[tuple[Path, Path]]:
    targets: dict[Path, Path] = {}
    for shard in map(Path, shard_paths):
        target = out_dir / f"{shard.stem}.parquet"
        if target in targets:
            raise ValueError(f"shards {targets[target]} and {shard} both map to {target}")
        targets[target] = shard
    return [(shard, target) for target, shard in targets.items()]


# Rows whose (reason, duplicate_of) must change. Rows already marked as duplicates are
# candidates again, so marks caused by a shard that has since changed are lifted.
_DUPLICATES_SQL = """
WITH candidates AS (
    SELECT shard, "row", sample_id, image_sha256, caption, reason, duplicate_of
    FROM manifest
    WHERE status = 'ok' OR reason IN ('exact_duplicate', 'duplicate_sample_id')
),
by_content AS (
    SELECT *,
           row_number() OVER content AS content_rank,
           first_value(sample_id) OVER content AS original
    FROM candidates
    WINDOW content AS (PARTITION BY image_sha256, caption ORDER BY shard, "row")
),
by_id AS (
    SELECT *, row_number() OVER (PARTITION BY sample_id ORDER BY shard, "row") AS id_rank
    FROM by_content
    WHERE content_rank = 1
),
desired AS (
    SELECT shard, "row", reason, duplicate_of,
           'exact_duplicate' AS new_reason, original AS new_duplicate_of
    FROM by_content WHERE content_rank > 1
    UNION ALL
    SELECT shard, "row", reason, duplicate_of,
           CASE WHEN id_rank > 1 THEN 'duplicate_sample_id' END,
           CASE WHEN id_rank > 1 THEN sample_id END
    FROM by_id
)
SELECT shard, "row", new_reason, new_duplicate_of
FROM desired
WHERE reason IS DISTINCT FROM new_reason OR duplicate_of IS DISTINCT FROM new_duplicate_of
ORDER BY shard, "row"
"""

_Change = tuple[str | None, str | None]  # (new reason or None for ok, new duplicate_of)


def _duplicate_changes(con: duckdb.DuckDBPyConnection) -> dict[str, dict[int, _Change]]:
    """``{shard: {row: change}}`` for the rows of the ``manifest`` view that must change."""
    changes: dict[str, dict[int, _Change]] = {}
    for shard, row, reason, duplicate_of in con.sql(_DUPLICATES_SQL).fetchall():
        changes.setdefault(shard, {})[row] = (reason, duplicate_of)
    return changes


def _apply_changes(table: pa.Table, changes: dict[int, _Change]) -> pa.Table:
    """The manifest with the given rows' status, reason and duplicate_of replaced."""
    if not changes:
        return table
    status = table.column("status").to_pylist()
    reason = table.column("reason").to_pylist()
    duplicate_of = table.column("duplicate_of").to_pylist()
    for i, row in enumerate(table.column("row").to_pylist()):
        if row in changes:
            reason[i], duplicate_of[i] = changes[row]
            status[i] = QUARANTINED if reason[i] else OK
    for name, values in (("status", status), ("reason", reason), ("duplicate_of", duplicate_of)):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(values, pa.string()))
    return table


def _deduplicate_pool(con: duckdb.DuckDBPyConnection, manifests: list[tuple[str, Path]]) -> list[str]:
    """Apply the duplicate pass to the whole pool; rewrite (atomically) only changed shards."""
    con.read_parquet([str(p) for _, p in manifests]).create_view("manifest")
    changes = _duplicate_changes(con)
    paths = dict(manifests)
    for shard, shard_changes in changes.items():
        write_parquet(paths[shard], _apply_changes(pq.read_table(paths[shard]), shard_changes))
    return sorted(changes)


_COUNTS_SQL = """
SELECT shard, status, reason, count(*) AS n
FROM read_parquet(?)
GROUP BY ALL
ORDER BY ALL
"""


def _shard_counts(con: duckdb.DuckDBPyConnection, manifests: list[tuple[str, Path]]) -> list[ShardCounts]:
    """Per-shard counts in pool order; raises if ok + quarantined != rows anywhere."""
    groups: dict[str, list[tuple[str, str | None, int]]] = {shard: [] for shard, _ in manifests}
    if manifests:
        for shard, status, reason, n in con.execute(_COUNTS_SQL, [[str(p) for _, p in manifests]]).fetchall():
            groups[shard].append((status, reason, n))
    return [_check_counts(shard, group) for shard, group in groups.items()]


def _check_counts(shard: str, groups: list[tuple[str, str | None, int]]) -> ShardCounts:
    rows = sum(n for *_, n in groups)
    ok = sum(n for status, reason, n in groups if status == OK and reason is None)
    by_reason = {reason: n for status, reason, n in groups if status == QUARANTINED and reason in REASONS}
    quarantined = sum(by_reason.values())
    if ok + quarantined != rows:
        raise RuntimeError(
            f"manifest of {shard}: ok ({ok}) + quarantined ({quarantined}) != rows ({rows}); "
            f"status/reason groups: {groups}"
        )
    return ShardCounts(shard, rows, ok, quarantined, by_reason)


def _summarise(per_shard: list[ShardCounts]) -> ManifestSummary:
    by_reason: Counter[str] = Counter()
    for counts in per_shard:
        by_reason.update(counts.by_reason)
    return ManifestSummary(
        total=sum(c.rows for c in per_shard),
        ok=sum(c.ok for c in per_shard),
        quarantined=sum(c.quarantined for c in per_shard),
        by_reason={r: by_reason[r] for r in REASONS if by_reason[r]},
        per_shard=per_shard,
        empty_shards=[c.shard for c in per_shard if c.rows == 0],
    )


def build_manifest(
    shard_paths: Iterable[str | Path], out_dir: str | Path, *, verify_images: bool = True,
    drop: Iterable[str] = (), max_pixels: int | None = MAX_PIXELS, decode: Decode | None = None,
    engine: Engine | None = None,
) -> ManifestSummary:
    """Manifest every shard, deduplicate the pool, write ``_summary.json``: a new version of the
    artefact root ``out_dir`` (see the module docstring); the summary names it (``version_dir``).

    Incremental: the current version's manifests are carried over (hardlinks) and one whose
    recorded source size+mtime match is reused. The duplicate pass and the summary cover every
    manifest of the version (shards added by earlier calls included), so ``out_dir`` is one pool;
    ``drop`` (shard names or stems) leaves shards out of the new version. ``max_pixels`` is the
    pixel cap (``too_large``); a manifest made under another cap is read again. ``decode``
    ("full" | "header") overrides ``verify_images``; a header-only manifest is read again by a
    ``full`` build.

    ``engine`` (``core.engine``; None: in this process) reads the shards that need reading, one
    task per shard; the manifests are written here in shard order, so every engine writes the same
    bytes. A shard whose task fails (its worker died) gets the ``unreadable_shard`` row that an
    unexpected error inside the reader gives.
    """
    if decode is not None:
        verify_images = decode_verifies(decode)
    engine = resolve_engine(engine)
    art = versions.Artefact(out_dir, "raw_pairs")
    read, reused, dropped = [], [], []
    base = art.current()
    recorded = versions.version_info(base).get("files", {}) if base is not None else {}
    with art.write(base=base) as staging:
        out = staging.path
        for name in drop:
            target = out / f"{Path(name).stem}.parquet"
            if target.exists():
                target.unlink()
                dropped.append(Path(name).name)
        todo = []
        for shard, target in _manifest_targets(shard_paths, out):
            if _is_current(target, shard, verify_images, max_pixels) and _intact(target, out, recorded):
                reused.append(shard.name)
            else:
                todo.append((shard, target))
        reader = functools.partial(read_shard_manifest, verify_images=verify_images, max_pixels=max_pixels)
        for outcome in engine.map_shards(reader, [shard for shard, _ in todo]):
            shard, target = todo[outcome.index]
            table = outcome.value if outcome.ok else failed_shard_manifest(
                shard, outcome.error, verify_images=verify_images, max_pixels=max_pixels)
            write_parquet(target, table)
            read.append(shard.name)
        manifests = manifest_files(out)
        with duckdb.connect() as con:
            rewritten = _deduplicate_pool(con, manifests) if manifests else []
            summary = _summarise(_shard_counts(con, manifests))
        write_json(out / SUMMARY_NAME, summary.to_json())
    return dataclasses.replace(summary, read_shards=read, reused_shards=reused, rewritten_shards=rewritten,
                               dropped_shards=dropped, version_dir=staging.version_dir,
                               version_id=staging.version_id)


_OK_ROWS_SQL = f"""
SELECT {", ".join(f'"{c}"' for c in OK_ROW_COLUMNS)}
FROM read_parquet(?)
WHERE status = 'ok'
ORDER BY "row"
"""


def ok_rows(manifest_dir: str | Path) -> Iterator[pa.Table]:
    """Valid pairs in pool order, one table per shard (shards by name; zero-row tables kept).

    Columns ``OK_ROW_COLUMNS``; a pair's global sample index is its position in this stream.
    """
    manifests = manifest_files(manifest_dir)
    with duckdb.connect() as con:
        for _, path in manifests:
            yield con.sql(_OK_ROWS_SQL, params=[str(path)]).to_arrow_table()


def pool_counts(manifest_dir: str | Path) -> list[tuple[str, int]]:
    """``(shard, number of ok rows)`` in pool order, shards with none included."""
    manifests = manifest_files(manifest_dir)
    with duckdb.connect() as con:
        return [(c.shard, c.ok) for c in _shard_counts(con, manifests)]


def pool_identity(manifest_dir: str | Path) -> str:
    """A hash naming the pool's content: every manifest's source shard (name, size, mtime, format)
    and the pool summary (ok and quarantine counts after the duplicate pass). Any shard added,
    removed or rewritten changes it."""
    manifest_dir = versions.resolve(manifest_dir)  # once: both reads below see one version
    h = hashlib.sha256()
    for shard, path in manifest_files(manifest_dir):
        info = manifest_info(path)
        h.update(json.dumps([shard, info.get("source_size"), info.get("source_mtime_ns"),
                             info.get("format_version")]).encode())
    summary = versions.resolve(manifest_dir) / SUMMARY_NAME
    if summary.exists():
        h.update(summary.read_bytes())
    return h.hexdigest()
