"""Pools that ship precomputed CLIP embeddings instead of images: DataComp CommonPool and LAION.

``ingest_precomputed(source, manifest_root, embeddings_root)`` reads the pool part by part (one
metadata parquet and its row-aligned embeddings at a time: memory is one part, never the pool) and
commits two versions that the later stages read unchanged:

* a manifest version of ``manifest_root`` (one ``<part>.parquet`` per part, ``MANIFEST_SCHEMA``,
  ``_summary.json``) — every input row is one manifest row, ``ok`` or ``quarantined`` with one
  reason;
* an embeddings version of ``embeddings_root`` in the ``embed.encode`` store format (one directory
  per part: ``image.npy``/``text.npy`` L2-normalised float16, ``sample_id.npy`` 'S32', ``meta.json``
  with the encoder identity), whose rows are exactly the part's ok manifest rows in row order and
  whose ``manifest`` ref pins the manifest version.

Layouts (``layout="auto"`` tells them apart; a ``datacomp:`` / ``laion:`` prefix on ``source``
forces one; anything else is refused with a message naming both):

* ``datacomp``: a folder (or its ``metadata/`` subfolder) of ``<hash>.parquet`` files with a
  row-aligned ``<hash>.npz`` each. Parquet: ``uid`` (32 hex), ``url``, ``text``, ... ; npz:
  ``b32_img``/``b32_txt`` (512-d) and optionally ``l14_img``/``l14_txt`` (768-d), float16.
  ``embedding="b32"|"l14"`` picks the pair. Parts are named by the file stem.
* ``laion`` (clip-retrieval): ``img_emb/img_emb_N.npy``, ``text_emb/text_emb_N.npy``,
  ``metadata/metadata_N.parquet``, row-aligned; parts in numeric order of N, named
  ``metadata_NNNNNN`` (zero-padded, so name order is part order). The ``.npy`` files are read
  through a memory map, chunk by chunk.

Parts are found by listing the folders and parsing the names, never by formatting them:
clip-retrieval writes N zero-padded to the width of the part count once there are 10 or more
(``str(n).zfill(int(log10(count)) + 1)``: ``img_emb_00.npy`` … ``img_emb_11.npy``), and other
writers do not pad, so ``img_emb_1.npy`` and ``img_emb_01.npy`` are both part 1. The listing is
refused (``PoolPartsError``, naming the files) when two files of a folder give the same part
(``metadata_01.parquet`` and ``metadata_1.parquet``), when a file of a folder's kind does not parse
(``metadata/extra.parquet``), and when the folders do not list the same parts (LAION: ``img_emb``,
``text_emb`` and ``metadata``; DataComp: the parquet and npz stems): a missing file is an error,
not a quarantine. ``PoolPartsError`` is not a ``ValueError``, so a caller that reads "not a pool
with embeddings" from a ``ValueError`` never takes a broken pool for another kind of source.

Sample ids (the 128-bit identity every later stage keys on, 32 lowercase hex characters):
a ``uid`` column of 32 hex characters when the metadata has one (DataComp always); otherwise
(LAION metadata in general) ``sha256(url UTF-8 + b"\\0" + caption UTF-8, caption as stored)[:32]``.
img2dataset's ``key`` is positional (it differs between downloads of the same data), so it is
never used as the identity; it is kept in the manifest's ``key`` column.

Reasons (first that applies): ``unreadable_part`` (embeddings file unreadable, lacking
the chosen keys, of another dimension, or not row-aligned with the metadata: every row of the part;
``detail`` says what), ``bad_uid`` (uid null / not 32 hex; LAION without uid column: no url),
``missing_caption``, ``empty_caption`` (after stripping), ``invalid_embedding`` (image or text
embedding non-finite or of zero norm), ``duplicate_sample_id`` (the id of an earlier ok row in pool
order, parts by name then row; ``duplicate_of`` = the id). The duplicate pass is one DuckDB query
over all the manifest parts once they are written (out of core); the parts it changes are rewritten,
manifest and embeddings. A final check compares every embedding part's ids with the manifest's ok ids.

No images: ``image_member``, ``image_offset`` and ``image_size`` are null and the manifests' schema
metadata (``manifest.manifest_info``) says ``"images": false`` (``has_images(manifest_dir)``), so a
training stage can refuse a pool it cannot read pixels from. ``join_images`` reports which uids of
such a pool have an image in a set of webdataset shards (the join for training on those images is
not wired).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dynamics_assets.core.ingest.manifest import (FORMAT_VERSION, MANIFEST_SCHEMA, METADATA_KEY, OK, QUARANTINED,
                                                  SUMMARY_NAME, ShardCounts, _shard_counts, _summarise,
                                                  build_manifest, manifest_files, manifest_info)
from dynamics_assets.core.io import versions
from dynamics_assets.core.io.arrays import npy_header
from dynamics_assets.core.io.atomic import atomic_dir, write_json, write_parquet

LAYOUTS = ("datacomp", "laion")
# embedding choice -> (npz image key, npz text key, dimension, open_clip model of the OpenAI weights)
EMBEDDINGS = {"b32": ("b32_img", "b32_txt", 512, "ViT-B-32"), "l14": ("l14_img", "l14_txt", 768, "ViT-L-14")}
MODELS_BY_DIM = {512: "ViT-B-32", 768: "ViT-L-14"}  # LAION-400M: B/32; LAION-5B: L/14 (OpenAI weights)
CHUNK_ROWS = 65536
_UID = re.compile(r"[0-9a-fA-F]{32}")
_LAION_PART = re.compile(r"metadata_(\d+)\.parquet")
# LAION folder -> (file name pattern, suffix of the files the folder holds)
_LAION_FILES = {"img_emb": (re.compile(r"img_emb_(\d+)\.npy"), ".npy", "img_emb_N.npy"),
                "text_emb": (re.compile(r"text_emb_(\d+)\.npy"), ".npy", "text_emb_N.npy"),
                "metadata": (_LAION_PART, ".parquet", "metadata_N.parquet")}
PART_NAME_WIDTH = 6  # metadata_NNNNNN (wider only past 999999 parts)
EXPECTED = ("a DataComp pool: a folder (or its metadata/ subfolder) of <hash>.parquet files each with a "
            "row-aligned <hash>.npz (keys b32_img, b32_txt[, l14_img, l14_txt]); or a LAION / "
            "clip-retrieval pool: img_emb/img_emb_N.npy, text_emb/text_emb_N.npy and "
            "metadata/metadata_N.parquet")


# ----------------------------------------------------------------------------- layout


class PoolPartsError(Exception):
    """The pool's files do not list one consistent set of parts (see the module docstring). Not a
    ``ValueError``: the folder is a pool with embeddings, a broken one."""


@dataclass(frozen=True)
class Part:
    name: str  # the manifest's shard name, the manifest file stem and the embedding directory
    metadata: Path
    image: Path  # datacomp: the npz; laion: img_emb_N.npy
    text: Path   # datacomp: the npz; laion: text_emb_N.npy


@dataclass(frozen=True)
class PoolSource:
    layout: str
    root: Path  # the folder holding the files (datacomp: the one with the parquet files)
    parts: list[Part]  # in part (= pool) order


def parse_source(source: str | Path) -> tuple[str, Path]:
    """``("auto"|"datacomp"|"laion", path)`` from ``"datacomp:/p"``, ``"laion:/p"`` or a plain path."""
    text = str(source)
    for layout in LAYOUTS:
        if text.startswith(f"{layout}:"):
            return layout, Path(text[len(layout) + 1:])
    return "auto", Path(text)


def _datacomp_dir(path: Path) -> Path | None:
    for d in (path, path / "metadata"):
        if d.is_dir() and any(d.glob("*.parquet")) and any(d.glob("*.npz")):
            return d
    return None


def _is_laion(path: Path) -> bool:
    return all((path / d).is_dir() for d in _LAION_FILES)


def _listed(folder: Path, suffix: str) -> list[Path]:
    """The folder's files with ``suffix``, hidden files left out, by name."""
    return sorted(p for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".")
                  and p.is_file())


def _laion_numbers(folder: Path, pattern: re.Pattern, suffix: str, label: str) -> dict[int, Path]:
    """Part number -> file of one LAION folder, by listing and parsing (padded or not)."""
    found: dict[int, list[Path]] = {}
    strangers = []
    for p in _listed(folder, suffix):
        if (m := pattern.fullmatch(p.name)) is None:
            strangers.append(p.name)
        else:
            found.setdefault(int(m.group(1)), []).append(p)
    if strangers:
        raise PoolPartsError(f"{folder}: {', '.join(strangers)} not named {label} "
                             f"(clip-retrieval layout): rename or remove it")
    same = {n: ps for n, ps in found.items() if len(ps) > 1}
    if same:
        listed = "; ".join(" and ".join(p.name for p in ps) for _, ps in sorted(same.items()))
        raise PoolPartsError(f"{folder}: two files with the same part number: {listed} (keep one)")
    return {n: ps[0] for n, ps in found.items()}


def _differing(root: Path, listed: dict[str, dict]) -> str:
    """``'img_emb lacks part 3 (metadata/metadata_3.parquet); ...'`` for the folders' differing parts."""
    every = set().union(*(set(v) for v in listed.values()))
    out = []
    for folder, parts in listed.items():
        missing = sorted(every - set(parts))
        if missing:
            having = [f"{f}/{listed[f][n].name}" for n in missing[:5] for f in listed if n in listed[f]][:5]
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            out.append(f"{folder} lacks part{'s' if len(missing) > 1 else ''} "
                       f"{', '.join(map(str, missing[:5]))}{more} (present: {', '.join(having)})")
    return "; ".join(out)


def _laion_parts(path: Path) -> list[Part]:
    listed = {d: _laion_numbers(path / d, *spec) for d, spec in _LAION_FILES.items()}
    if len({frozenset(v) for v in listed.values()}) > 1:
        raise PoolPartsError(f"{path}: img_emb, text_emb and metadata must list the same parts: "
                             f"{_differing(path, listed)}")
    numbers = sorted(listed["metadata"])
    width = max(PART_NAME_WIDTH, len(str(numbers[-1])) if numbers else 0)
    return [Part(f"metadata_{n:0{width}d}", listed["metadata"][n], listed["img_emb"][n], listed["text_emb"][n])
            for n in numbers]


def _datacomp_parts(folder: Path) -> list[Part]:
    listed = {suffix: {p.stem: p for p in _listed(folder, suffix)} for suffix in (".parquet", ".npz")}
    if set(listed[".parquet"]) != set(listed[".npz"]):
        lone = [f"{p.name} has no {other}" for suffix, other in ((".parquet", ".npz"), (".npz", ".parquet"))
                for stem, p in sorted(listed[suffix].items()) if stem not in listed[other]]
        more = f" and {len(lone) - 5} more" if len(lone) > 5 else ""
        raise PoolPartsError(f"{folder}: every <hash>.parquet needs its row-aligned <hash>.npz and the "
                             f"reverse: {', '.join(lone[:5])}{more}")
    return [Part(stem, p, p.with_suffix(".npz"), p.with_suffix(".npz")) for stem, p in sorted(listed[".parquet"].items())]


def detect_layout(source: str | Path, layout: str = "auto") -> PoolSource:
    """The pool's layout and parts; ``ValueError`` naming the expected layouts when it is neither."""
    forced, path = parse_source(source)
    layout = forced if forced != "auto" else layout
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"layout must be one of auto, {', '.join(LAYOUTS)}; got {layout!r}")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: pool folder not found (expected {EXPECTED})")
    datacomp = _datacomp_dir(path) if layout in ("auto", "datacomp") else None
    laion = _is_laion(path) if layout in ("auto", "laion") else False
    if datacomp is not None and laion:
        raise ValueError(f"{path}: looks like both a DataComp and a LAION pool; give datacomp:{path} or laion:{path}")
    if datacomp is not None:
        return PoolSource("datacomp", datacomp, _datacomp_parts(datacomp))
    if laion:
        return PoolSource("laion", path, _laion_parts(path))
    asked = "" if layout == "auto" else f" as {layout}"
    raise ValueError(f"{path}: not a pool with precomputed embeddings{asked}; expected {EXPECTED}")


# ----------------------------------------------------------------------------- one part


class PartError(Exception):
    """The part's embeddings cannot be used (every row becomes ``unreadable_part``)."""


@dataclass
class PartEmbeddings:
    image: np.ndarray  # (n, dim), any float dtype; a memory map for LAION
    text: np.ndarray


@contextlib.contextmanager
def open_embeddings(part: Part, layout: str, embedding: str, n: int, dim: int | None) -> Iterator[PartEmbeddings]:
    """The part's image and text embeddings (``PartError`` when they are unusable; a file listed
    and gone since is ``PoolPartsError``). DataComp's npz is loaded (it cannot be memory-mapped: one
    part in memory); LAION's .npy are memory-mapped."""
    for p in dict.fromkeys((part.image, part.text)):
        if not p.is_file():
            raise PoolPartsError(f"{p}: missing (listed with {part.metadata.name}, gone since)")
    try:
        if layout == "datacomp":
            img_key, txt_key, _, _ = EMBEDDINGS[embedding]
            with np.load(part.image, allow_pickle=False) as npz:
                missing = [k for k in (img_key, txt_key) if k not in npz.files]
                if missing:
                    raise PartError(f"{part.image.name}: no {', '.join(missing)} (has {sorted(npz.files)})")
                emb = PartEmbeddings(npz[img_key], npz[txt_key])
        else:
            emb = PartEmbeddings(np.load(part.image, mmap_mode="r", allow_pickle=False),
                                 np.load(part.text, mmap_mode="r", allow_pickle=False))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise PartError(f"{part.image.name}: unreadable ({type(e).__name__}: {e})") from e
    for kind, a in (("image", emb.image), ("text", emb.text)):
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
            raise PartError(f"{kind} embeddings: expected a 2-d float array, got {a.dtype} {a.shape}")
        if a.shape[0] != n:
            raise PartError(f"{kind} embeddings have {a.shape[0]} rows, the metadata {n}: not row-aligned")
        if dim is not None and a.shape[1] != dim:
            raise PartError(f"{kind} embeddings are {a.shape[1]}-d, the pool's are {dim}-d")
    try:
        yield emb
    finally:
        del emb


def _valid_rows(emb: PartEmbeddings) -> np.ndarray:
    """Rows whose image and text embeddings are both finite with non-zero norm (chunked)."""
    n = emb.image.shape[0]
    valid = np.zeros(n, dtype=bool)
    for s in range(0, n, CHUNK_ROWS):
        ok = np.ones(min(CHUNK_ROWS, n - s), dtype=bool)
        for a in (emb.image, emb.text):
            x = np.asarray(a[s:s + CHUNK_ROWS], dtype=np.float32)
            with np.errstate(over="ignore", invalid="ignore"):
                norms = np.linalg.norm(x, axis=1)
            ok &= np.isfinite(x).all(axis=1) & np.isfinite(norms) & (norms > 0)
        valid[s:s + CHUNK_ROWS] = ok
    return valid


def _write_normalised(path: Path, a: np.ndarray, rows: np.ndarray, dim: int) -> None:
    """``a[rows] / ‖·‖₂`` as float16 into ``path``, chunk by chunk."""
    if len(rows) == 0:
        np.save(path, np.zeros((0, dim), dtype=np.float16), allow_pickle=False)
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(rows), dim))
    for s in range(0, len(rows), CHUNK_ROWS):
        x = np.asarray(a[rows[s:s + CHUNK_ROWS]], dtype=np.float32)
        out[s:s + CHUNK_ROWS] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    out.flush()
    del out


def _write_embedding_part(dest: Path, emb: PartEmbeddings | None, rows: np.ndarray, ids: list[str], dim: int,
                          encoder: dict[str, Any], part: Part) -> None:
    with atomic_dir(dest) as tmp:
        for name, a in (("image.npy", None if emb is None else emb.image), ("text.npy", None if emb is None else emb.text)):
            if a is None:
                np.save(tmp / name, np.zeros((0, dim), dtype=np.float16), allow_pickle=False)
            else:
                _write_normalised(tmp / name, a, rows, dim)
        np.save(tmp / "sample_id.npy", np.array(ids, dtype="S32"), allow_pickle=False)
        write_json(tmp / "meta.json", {
            "encoder": encoder, "shard": part.name, "n": len(ids), "dim": dim, "dtype": "float16",
            "normalised": "l2", "invalid_rows": {"image": [], "text": []},
            "source": {"metadata": part.metadata.name, "embeddings": sorted({part.image.name, part.text.name})},
        })


def derived_sample_id(url: str, caption: str) -> str:
    """The id of a row without a uid: sha256(url + NUL + caption, UTF-8)[:32] (caption as stored)."""
    return hashlib.sha256(url.encode("utf-8") + b"\0" + caption.encode("utf-8")).hexdigest()[:32]


def _column(table: pa.Table, name: str) -> list[Any] | None:
    return table.column(name).to_pylist() if name in table.column_names else None


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def caption_column(columns: Iterable[str], layout: str) -> str | None:
    """The metadata column the captions are read from: DataComp ``text`` (else ``caption``), LAION
    ``caption`` (else ``text``); None when there is neither."""
    names = set(columns)
    order = ("text", "caption") if layout == "datacomp" else ("caption", "text")
    return next((c for c in order if c in names), None)


def source_sample_ids(table: pa.Table, layout: str) -> list[str | None]:
    """The sample id of every row of a part's metadata table, as the ingest derives it (None: bad_uid)."""
    return _identities(table, layout)[0]


def _identities(table: pa.Table, layout: str) -> tuple[list[str | None], list[str | None], list[str | None]]:
    """``(sample ids, captions as stored, problems)`` per row."""
    n = table.num_rows
    column = caption_column(table.column_names, layout)
    caption = _column(table, column) if column else [None] * n
    uids = _column(table, "uid")
    if uids is not None or layout == "datacomp":
        uids = uids or [None] * n
        ids = [u.lower() if isinstance(u, str) and _UID.fullmatch(u) else None for u in uids]
        return ids, caption, [None if i else "bad_uid" for i in ids]
    urls = _column(table, "url") or [None] * n
    ids = [derived_sample_id(u, c if isinstance(c, str) else "") if isinstance(u, str) and u else None
           for u, c in zip(urls, caption)]
    return ids, caption, [None if i else "bad_uid" for i in ids]


_META_SKIP = {"uid", "text", "caption", "key"}


def _manifest_table(part: Part, table: pa.Table, layout: str, ids: list[str | None], captions: list[str | None],
                    reasons: list[str | None], details: list[str | None], info: dict[str, Any]) -> pa.Table:
    n = table.num_rows
    extra = [c for c in table.column_names if c not in _META_SKIP]
    extra_values = [table.column(c).to_pylist() for c in extra]
    meta_json = [json.dumps({c: _plain(v[i]) for c, v in zip(extra, extra_values)}, sort_keys=True, default=str)
                 for i in range(n)] if extra else [None] * n
    keys = _column(table, "key")
    width, height = _column(table, "original_width"), _column(table, "original_height")
    if width is None:
        width, height = _column(table, "width"), _column(table, "height")
    sha = _column(table, "sha256")
    none = [None] * n
    columns = {
        "sample_id": ids, "shard": [part.name] * n, "key": [None if k is None else str(k) for k in keys] if keys else none,
        "row": np.arange(n, dtype=np.int32), "image_member": none, "text_member": none, "json_member": none,
        "caption": captions, "width": width or none, "height": height or none,
        "pixels": [w * h if w is not None and h is not None else None for w, h in zip(width, height)] if width and height else none,
        "image_sha256": sha or none, "meta_json": meta_json,
        "status": [QUARANTINED if r else OK for r in reasons], "reason": reasons, "duplicate_of": none,
        "image_offset": none, "image_size": none, "detail": details,
    }
    metadata = {METADATA_KEY: json.dumps(info, sort_keys=True).encode()}
    return pa.table({name: pa.array(columns[name], type=field.type) for name, field in zip(MANIFEST_SCHEMA.names, MANIFEST_SCHEMA)},
                    schema=MANIFEST_SCHEMA.with_metadata(metadata))


def _source_info(part: Part, layout: str, embedding: str | None) -> dict[str, Any]:
    files = [p for p in dict.fromkeys((part.metadata, part.image, part.text)) if p.exists()]
    stats = [p.stat() for p in files]
    return {
        "format_version": FORMAT_VERSION, "shard": part.name, "source": "precomputed", "layout": layout,
        "embedding": embedding, "images": False, "files": [p.name for p in files],
        "source_size": sum(s.st_size for s in stats), "source_mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
    }


def ingest_part(part: Part, layout: str, embedding: str, dim: int, encoder: dict[str, Any],
                manifest_out: Path, embeddings_out: Path) -> None:
    """Write one part's manifest (``manifest_out/<part>.parquet``) and embedding directory
    (``embeddings_out/<part>/``); duplicates across parts are marked later."""
    info = _source_info(part, layout, embedding if layout == "datacomp" else None)
    try:
        table = pq.read_table(part.metadata)
    except (OSError, pa.ArrowException) as e:  # one row stands for the unreadable part's unknown rows
        detail = f"{part.metadata.name}: unreadable metadata ({type(e).__name__}: {e})"
        _write_embedding_part(embeddings_out / part.name, None, np.zeros(0, dtype=np.int64), [], dim, encoder, part)
        empty = pa.table({"x": pa.array([None], pa.null())})
        write_parquet(manifest_out / f"{part.name}.parquet",
                      _manifest_table(part, empty, layout, [None], [None], ["unreadable_part"], [detail], info))
        return
    n = table.num_rows
    ids, captions_raw, reasons = _identities(table, layout)
    captions = [c.strip() if isinstance(c, str) else None for c in captions_raw]
    details: list[str | None] = [None] * n
    for i, c in enumerate(captions):
        if reasons[i] is None and c is None:
            reasons[i] = "missing_caption"
        elif reasons[i] is None and not c:
            reasons[i] = "empty_caption"
    try:
        with open_embeddings(part, layout, embedding, n, dim) as emb:
            valid = _valid_rows(emb)
            for i in np.flatnonzero(~valid).tolist():
                reasons[i] = reasons[i] or "invalid_embedding"
            rows = np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)
            _write_embedding_part(embeddings_out / part.name, emb, rows, [ids[i] for i in rows.tolist()], dim,
                                  encoder, part)
    except PartError as e:
        reasons, details = ["unreadable_part"] * n, [str(e)] * n
        _write_embedding_part(embeddings_out / part.name, None, np.zeros(0, dtype=np.int64), [], dim, encoder, part)
    for i, r in enumerate(reasons):
        if r == "bad_uid":
            raw = _column(table, "uid")
            details[i] = f"uid {raw[i]!r}" if raw is not None else "no uid column and no url"
    write_parquet(manifest_out / f"{part.name}.parquet",
                  _manifest_table(part, table, layout, ids, captions, reasons, details, info))


# ----------------------------------------------------------------------------- the pool


_DUPLICATES_SQL = """
SELECT shard, "row", sample_id FROM (
    SELECT shard, "row", sample_id,
           row_number() OVER (PARTITION BY sample_id ORDER BY shard, "row") AS rank
    FROM read_parquet(?) WHERE status = 'ok'
) WHERE rank > 1 ORDER BY shard, "row"
"""


def _mark_duplicates(manifests: list[tuple[str, Path]], embeddings_out: Path, memory_limit: str) -> int:
    """Mark later ok rows with an earlier ok row's id ``duplicate_sample_id`` (manifest and
    embeddings of the parts concerned rewritten); returns how many."""
    if not manifests:
        return 0
    # settings as connection config, never pasted into SQL text (a path may hold a quote)
    with tempfile.TemporaryDirectory(prefix="precomputed-dups-") as spill, \
            duckdb.connect(config={"memory_limit": str(memory_limit), "temp_directory": spill}) as con:
        found = con.execute(_DUPLICATES_SQL, [[str(p) for _, p in manifests]]).fetchall()
    by_part: dict[str, dict[int, str]] = {}
    for shard, row, sample_id in found:
        by_part.setdefault(shard, {})[row] = sample_id
    paths = dict(manifests)
    for shard, rows in by_part.items():
        _drop_duplicates(paths[shard], embeddings_out / paths[shard].stem, rows)
    return len(found)


def _drop_duplicates(manifest: Path, emb_dir: Path, rows: dict[int, str]) -> None:
    table = pq.read_table(manifest)
    status, reason, dup = (table.column(c).to_pylist() for c in ("status", "reason", "duplicate_of"))
    row = table.column("row").to_pylist()
    order = sorted(range(len(row)), key=row.__getitem__)
    ok_positions = [i for i in order if status[i] == OK]  # embedding rows, in row order
    keep = np.array([k for k, i in enumerate(ok_positions) if row[i] not in rows], dtype=np.int64)
    for i in ok_positions:
        if row[i] in rows:
            status[i], reason[i], dup[i] = QUARANTINED, "duplicate_sample_id", rows[row[i]]
    for name, values in (("status", status), ("reason", reason), ("duplicate_of", dup)):
        j = table.schema.get_field_index(name)
        table = table.set_column(j, table.schema.field(j), pa.array(values, pa.string()))
    with atomic_dir(emb_dir) as tmp:
        for name in ("image.npy", "text.npy", "sample_id.npy"):
            np.save(tmp / name, np.load(emb_dir / name, mmap_mode="r")[keep], allow_pickle=False)
        meta = json.loads((emb_dir / "meta.json").read_text())
        write_json(tmp / "meta.json", {**meta, "n": int(len(keep))})
    write_parquet(manifest, table)


def _check_aligned(manifests: list[tuple[str, Path]], embeddings_out: Path) -> None:
    """Every embedding part holds exactly its manifest's ok ids, in row order; ok ids unique."""
    for shard, path in manifests:
        t = pq.read_table(path, columns=["sample_id", "row", "status"]).sort_by("row")
        ok = [s for s, st in zip(t.column("sample_id").to_pylist(), t.column("status").to_pylist()) if st == OK]
        stored = np.load(embeddings_out / path.stem / "sample_id.npy").astype(str).tolist()
        if stored != ok:
            raise RuntimeError(f"{shard}: embedding rows do not match the manifest's ok rows")
    with duckdb.connect() as con:
        dup = con.execute("SELECT count(*) - count(DISTINCT sample_id) FROM read_parquet(?) WHERE status = 'ok'",
                          [[str(p) for _, p in manifests]]).fetchone()[0] if manifests else 0
    if dup:
        raise RuntimeError(f"{dup} duplicate sample ids among ok rows after the duplicate pass")


@dataclass(frozen=True)
class PrecomputedSummary:
    layout: str
    embedding: str | None  # datacomp: b32 | l14; laion: None (one embedding)
    manifest_dir: Path  # the committed manifest version
    embeddings_dir: Path  # the committed embeddings version (its manifest ref pins manifest_dir)
    manifest_version: str
    embeddings_version: str
    total: int
    ok: int
    quarantined: int
    by_reason: dict[str, int]
    parts: list[ShardCounts]
    dim: int
    encoder: dict[str, Any]


def encoder_for(layout: str, embedding: str | None, dim: int) -> dict[str, Any]:
    """The encoder identity stored in meta.json (``cluster.refresh.encoder_identity`` compares it):
    the open_clip model of the OpenAI weights the pool was embedded with, and where it came from."""
    model = MODELS_BY_DIM.get(dim, f"unknown-{dim}d")
    return {"model_name": model, "weights": f"tag:{model}/openai", "precision": "fp16",
            "source": f"precomputed:{layout}" + (f"/{embedding}" if layout == "datacomp" else "")}


def _pool_dim(source: PoolSource, embedding: str) -> int:
    if source.layout == "datacomp":
        return EMBEDDINGS[embedding][2]
    for part in source.parts:
        with contextlib.suppress(OSError, ValueError):
            shape, *_ = npy_header(part.image)
            if len(shape) == 2:
                return int(shape[1])
    raise ValueError(f"{source.root}: no readable img_emb/*.npy")


def ingest_precomputed(source: str | Path, manifest_root: str | Path, embeddings_root: str | Path, *,
                       embedding: str = "b32", layout: str = "auto", encoder: dict[str, Any] | None = None,
                       memory_limit: str = "2GB") -> PrecomputedSummary:
    """Ingest a pool with precomputed embeddings (see the module docstring): one manifest version of
    ``manifest_root`` and one embeddings version of ``embeddings_root`` (ref ``manifest``), streamed
    part by part. ``embedding``: ``b32`` or ``l14`` (DataComp; LAION has one); ``encoder``: the
    identity to record instead of ``encoder_for(...)``."""
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {sorted(EMBEDDINGS)}, got {embedding!r}")
    pool = detect_layout(source, layout)
    if not pool.parts:
        raise ValueError(f"{pool.root}: no parts found (expected {EXPECTED})")
    dim = _pool_dim(pool, embedding)
    identity = dict(encoder) if encoder is not None else encoder_for(pool.layout, embedding, dim)
    emb_art = versions.Artefact(embeddings_root, "embeddings")
    man_art = versions.Artefact(manifest_root, "raw_pairs")
    with emb_art.write(meta={"source": "precomputed", "layout": pool.layout}) as emb_staging:
        with man_art.write(meta={"source": "precomputed", "layout": pool.layout}) as man_staging:
            for part in pool.parts:
                ingest_part(part, pool.layout, embedding, dim, identity, man_staging.path, emb_staging.path)
            manifests = manifest_files(man_staging.path)
            _mark_duplicates(manifests, emb_staging.path, memory_limit)
            _check_aligned(manifests, emb_staging.path)
            with duckdb.connect() as con:
                summary = _summarise(_shard_counts(con, manifests))
            write_json(man_staging / SUMMARY_NAME, {**summary.to_json(), "source": "precomputed",
                                                    "layout": pool.layout, "embedding": embedding, "dim": dim,
                                                    "encoder": identity})
        emb_staging.refs["manifest"] = man_staging.version_dir
    return PrecomputedSummary(pool.layout, embedding if pool.layout == "datacomp" else None,
                              man_staging.version_dir, emb_staging.version_dir, man_staging.version_id,
                              emb_staging.version_id, summary.total, summary.ok, summary.quarantined,
                              summary.by_reason, summary.per_shard, dim, identity)


def has_images(manifest_dir: str | Path) -> bool:
    """False when any manifest of the version was made from precomputed embeddings (no image members)."""
    return all(manifest_info(p).get("images", True) for _, p in manifest_files(manifest_dir))


# ----------------------------------------------------------------------------- joining images


@dataclass(frozen=True)
class ImageJoin:
    pool_ok: int  # ok rows of the precomputed pool
    with_image: int  # of them, with an ok image sample of the same uid in the shards
    without_image: int
    missing_sample: list[str]  # up to ``sample`` uids without an image, in pool order
    shard_samples: int  # ok samples in the shards
    not_in_pool: int  # ok shard samples whose uid is not an ok row of the pool
    shards_manifest_dir: Path | None  # the shards' manifest version (None when built in a temporary root)


_JOIN_SQL = """
WITH pool AS (SELECT shard, "row", sample_id FROM read_parquet($pool) WHERE status = 'ok'),
     images AS (SELECT DISTINCT sample_id FROM read_parquet($shards) WHERE status = 'ok')
SELECT (SELECT count(*) FROM pool),
       (SELECT count(*) FROM pool p SEMI JOIN images i USING (sample_id)),
       (SELECT count(*) FROM images),
       (SELECT count(*) FROM images i ANTI JOIN pool p USING (sample_id))
"""
_MISSING_SQL = """
SELECT p.sample_id FROM read_parquet($pool) p ANTI JOIN
    (SELECT sample_id FROM read_parquet($shards) WHERE status = 'ok') i USING (sample_id)
WHERE p.status = 'ok' ORDER BY p.shard, p."row" LIMIT $n
"""


def join_images(manifest_dir: str | Path, shard_paths: Iterable[str | Path], *,
                shards_manifest_root: str | Path | None = None, sample: int = 10,
                verify_images: bool = True) -> ImageJoin:
    """Which ok uids of a precomputed pool (``manifest_dir``) have an image in the webdataset
    ``shard_paths`` (whose ``.json`` carries the uid): the shards are manifested with
    ``build_manifest`` (into ``shards_manifest_root``, or a temporary root), then one DuckDB join.
    A shard sample counts when it is ok there (readable image, caption); its ``sample_id`` is its
    json uid. Training on the joined images is not wired: this only reports."""
    pool_files = [str(p) for _, p in manifest_files(manifest_dir)]
    with contextlib.ExitStack() as stack:
        root = Path(shards_manifest_root) if shards_manifest_root is not None else \
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="join-images-")))
        built = build_manifest(list(shard_paths), root, verify_images=verify_images)
        shard_files = [str(p) for _, p in manifest_files(built.version_dir)]
        if not pool_files or not shard_files:
            n_pool = sum(pq.read_table(p, columns=["status"]).column("status").to_pylist().count(OK) for p in pool_files)
            return ImageJoin(n_pool, 0, n_pool, [], built.ok, built.ok,
                             built.version_dir if shards_manifest_root is not None else None)
        with duckdb.connect() as con:
            params = {"pool": pool_files, "shards": shard_files}
            pool_ok, with_image, images, not_in_pool = con.execute(_JOIN_SQL, params).fetchone()
            missing = [r[0] for r in con.execute(_MISSING_SQL, {**params, "n": int(sample)}).fetchall()]
    return ImageJoin(int(pool_ok), int(with_image), int(pool_ok - with_image), missing, int(images),
                     int(not_in_pool), built.version_dir if shards_manifest_root is not None else None)


__all__ = ["EMBEDDINGS", "LAYOUTS", "ImageJoin", "Part", "PoolPartsError", "PoolSource", "PrecomputedSummary",
           "caption_column", "derived_sample_id", "source_sample_ids",
           "detect_layout", "encoder_for", "has_images", "ingest_precomputed", "join_images", "open_embeddings",
           "parse_source"]
