"""A plan as the metadata parquet of a LAION pool: what LAION users subset and download with img2dataset.

A LAION pool has no uid: the project derives each row's id (``precomputed.derived_sample_id``:
``sha256(url UTF-8 + NUL + caption UTF-8)[:32]``, caption as stored) and no LAION shard carries it,
so a DataComp subset file of such a pool subsets nothing. LAION users subset by filtering the
metadata and downloading the rows with img2dataset; this export is that filtered metadata.

``write_laion_metadata(plan_dir, manifest_dir, source, out_root, pool=...)`` commits one
version of the artefact root ``out_root`` holding

  metadata.parquet     one row per distinct planned sample, in pool order (parts by name, then
                       row): the source metadata row with all its columns as they are in the pool's
                       ``metadata_N.parquet`` (``url``, ``caption``, ...), plus ``count`` (int64: the
                       plan's multiplicity, ≥ 1) and ``sample_id`` (the project's 32-hex id);
  laion_metadata.json  rows, samples (the counts' sum), url / caption columns, the img2dataset
                       command, plan / pool / manifest versions;

with refs ``plan`` and ``manifest``. img2dataset downloads each row once
(``img2dataset --url_list metadata.parquet --input_format parquet --url_col url --caption_col
caption --save_additional_columns '["count","sample_id"]' ...``); ``count`` travels into every
downloaded sample's ``.json``, so a sample planned k times can be written k times afterwards.

The rows are read back from the pool's own metadata files (``source``: the pool folder, as given
to the ingest), one part at a time, and each selected row's id is derived again and compared with
the manifest's: a source file changed since the ingest is an error naming it, never a silent
mismatch. DataComp pools (``<hash>.parquet``: ``url``, ``text``, ``uid``) are exported the same way
(caption column ``text``): DataComp's own download runs img2dataset on these parquets.

A plan drawn on another pool is refused (``io.lineage.check_plan_inputs``: ``StalePlanError``; a manifest
other than the pool pins: ``LineageError``), as
is a plan whose pool (clusters version) was built from another manifest version than the one given,
and a manifest not made from a pool of precomputed embeddings (an image pool has no metadata
parquet: export it with ``webdataset.export_plan``).
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dynamics_assets.core.ingest.manifest import manifest_info
from dynamics_assets.core.ingest.pool import pool_shards, shard_ok_rows
from dynamics_assets.core.ingest.precomputed import caption_column, detect_layout, source_sample_ids
from dynamics_assets.core.io import lineage, versions
from dynamics_assets.core.sample.plan_io import read_plan

METADATA_NAME = "metadata.parquet"
INFO_NAME = "laion_metadata.json"
COUNT_COLUMN = "count"
ID_COLUMN = "sample_id"
URL_COLUMN = "url"


@dataclass(frozen=True)
class LaionMetadataSummary:
    version_dir: Path
    version_id: str
    path: Path  # the metadata parquet
    rows: int  # distinct planned samples: one row each
    samples: int  # the counts' sum: the plan's size, repeats counted
    url_col: str
    caption_col: str
    command: str  # the img2dataset command that downloads it
    plan_version: str
    pool_version: str
    manifest_version: str


def img2dataset_command(metadata_path: str | os.PathLike, *, url_col: str, caption_col: str,
                        output_folder: str = "images") -> str:
    """The img2dataset command line that downloads every row of ``metadata_path`` into webdataset shards."""
    extra = json.dumps([COUNT_COLUMN, ID_COLUMN], separators=(",", ":"))
    return (f"img2dataset --url_list {shlex.quote(str(metadata_path))} --input_format parquet "
            f"--url_col {shlex.quote(url_col)} --caption_col {shlex.quote(caption_col)} "
            f"--save_additional_columns {shlex.quote(extra)} --output_format webdataset "
            f"--output_folder {shlex.quote(output_folder)}")


def _aligned(table: pa.Table, schema: pa.Schema, where: Path) -> pa.Table:
    """``table`` with exactly ``schema``'s columns (a column this part lacks: nulls), cast to its types."""
    columns = []
    for f in schema:
        if f.name in table.column_names:
            try:
                columns.append(table.column(f.name).cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ValueError(f"{where}: column {f.name!r} ({table.schema.field(f.name).type}) does not fit "
                                 f"the other parts' {f.type}: {e}") from e
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def write_laion_metadata(plan_dir: str | os.PathLike, manifest_dir: str | os.PathLike, source: str | os.PathLike,
                         out_root: str | os.PathLike, *, pool: str | os.PathLike) -> LaionMetadataSummary:
    """Commit the metadata parquet of exactly the plan (see the module docstring). ``source``: the
    pool folder the manifest was ingested from; ``pool``: the clusters version (directory or
    id) the caller reads — the plan must have been drawn on it."""
    plan_dir = versions.resolve(plan_dir)
    manifest_dir = versions.resolve(manifest_dir)
    lineage.check_plan_inputs(plan_dir, pool, "export", manifest=manifest_dir)
    shards = pool_shards(manifest_dir)
    infos = {s.name: manifest_info(s.manifest_path) for s in shards}
    layouts = {i.get("layout") for i in infos.values() if i.get("source") == "precomputed"}
    if not shards or len(layouts) != 1 or any(i.get("source") != "precomputed" for i in infos.values()):
        raise ValueError(f"{manifest_dir}: not the manifest of a pool of precomputed embeddings (LAION or DataComp "
                         "metadata parquets); a pool of images is exported as webdataset shards")
    layout = layouts.pop()
    parts = {p.name: p for p in detect_layout(source, layout).parts}
    plan = read_plan(plan_dir, mmap=True)
    offsets = np.array([s.offset for s in shards] + [sum(s.n_ok for s in shards)], dtype=np.int64)
    indices, mult = plan.indices, plan.multiplicity
    if len(indices) and int(indices[-1]) >= int(offsets[-1]):
        raise ValueError(f"plan {plan_dir} selects index {int(indices[-1])}; the manifest's pool has "
                         f"{int(offsets[-1])} ok rows")
    bounds = np.searchsorted(indices, offsets)
    selected = [(s, int(lo), int(hi)) for s, lo, hi in zip(shards, bounds[:-1], bounds[1:]) if hi > lo]
    for shard in (s for s in shards if s.n_ok):
        part = parts.get(shard.name)
        if part is None or part.metadata.name not in infos[shard.name].get("files", []):
            raise ValueError(f"{source}: no metadata file for part {shard.name} of manifest {manifest_dir.name} "
                             f"(give the pool folder the manifest was ingested from)")
    # one schema for the whole pool (parquet footers only): its parts' columns unified, + count, sample_id
    try:
        schemas = [pq.read_schema(parts[s.name].metadata) for s in shards if s.n_ok]  # unreadable parts: 0 ok
        source_schema = pa.unify_schemas(schemas, promote_options="permissive").remove_metadata()
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{source}: the metadata parts' columns cannot be read or do not agree ({e})") from e
    for name in (COUNT_COLUMN, ID_COLUMN):
        if name in source_schema.names:
            raise ValueError(f"{source}: the metadata already has a column {name!r}; the export adds it")
    url_col = URL_COLUMN if URL_COLUMN in source_schema.names else None
    caption_col = caption_column(source_schema.names, layout)
    if url_col is None or caption_col is None:
        raise ValueError(f"{source}: the metadata has no url or caption column (columns {source_schema.names})")
    schema = source_schema.append(pa.field(COUNT_COLUMN, pa.int64())).append(pa.field(ID_COLUMN, pa.string()))
    rows = samples = 0
    art = versions.Artefact(out_root, "laion_metadata")
    refs = versions.pinned(plan=plan_dir, manifest=manifest_dir)
    with art.write(refs=refs) as staging:
        with pq.ParquetWriter(staging / METADATA_NAME, schema) as writer:
            for shard, lo, hi in selected:
                out = _part_rows(parts[shard.name].metadata, shard, indices[lo:hi], mult[lo:hi], layout,
                                 source_schema, schema)
                writer.write_table(out)
                rows += out.num_rows
                samples += int(pc.sum(out[COUNT_COLUMN]).as_py() or 0)
        if rows != len(indices) or samples != int(np.asarray(mult, dtype=np.int64).sum()):
            raise RuntimeError(f"wrote {rows} rows / {samples} samples, the plan has {len(indices)} / {plan.size}")
        info = {"format": "laion-metadata", "rows": rows, "samples": samples, "url_col": url_col,
                "caption_col": caption_col, "count_col": COUNT_COLUMN, "id_col": ID_COLUMN, "layout": layout,
                "command": img2dataset_command("$EXPORT_DIR/" + METADATA_NAME, url_col=url_col,
                                               caption_col=caption_col),
                "plan_version": plan_dir.name, "pool_version": str(plan.meta.get("pool_version")),
                "manifest_version": manifest_dir.name, "strategy": plan.meta.get("strategy"),
                "epoch": plan.meta.get("epoch")}
        (staging / INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    path = staging.version_dir / METADATA_NAME
    return LaionMetadataSummary(staging.version_dir, staging.version_id, path, rows, samples, url_col, caption_col,
                                img2dataset_command(path, url_col=url_col, caption_col=caption_col), plan_dir.name,
                                info["pool_version"], manifest_dir.name)


def _part_rows(metadata: Path, shard, indices: np.ndarray, mult: np.ndarray, layout: str,
               source_schema: pa.Schema, schema: pa.Schema) -> pa.Table:
    """The planned rows of one part, read from its metadata file and checked against the manifest."""
    ok = shard_ok_rows(shard, ["sample_id"])
    local = pa.array(np.asarray(indices, dtype=np.int64) - shard.offset)
    source_rows = ok["row"].take(local).to_numpy().astype(np.int64)
    expected = ok["sample_id"].take(local).to_pylist()
    try:
        table = pq.read_table(metadata)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{metadata}: unreadable metadata ({type(e).__name__}: {e})") from e
    if len(source_rows) and int(source_rows.max()) >= table.num_rows:
        raise ValueError(f"{metadata}: {table.num_rows} rows, the manifest's part {shard.name} has row "
                         f"{int(source_rows.max())}: the file changed since the ingest; ingest it again")
    taken = table.take(pa.array(source_rows))
    changed = [r for r, a, b in zip(source_rows.tolist(), source_sample_ids(taken, layout), expected) if a != b]
    if changed:
        raise ValueError(f"{metadata}: rows {changed[:5]} no longer give the ids the manifest holds for them: "
                         f"the file changed since the ingest; ingest it again")
    out = _aligned(taken, source_schema, metadata)
    out = out.append_column(schema.field(COUNT_COLUMN), pa.array(np.asarray(mult, dtype=np.int64)))
    return out.append_column(schema.field(ID_COLUMN), pa.array(expected, pa.string()))


__all__ = ["COUNT_COLUMN", "ID_COLUMN", "LaionMetadataSummary", "img2dataset_command", "write_laion_metadata"]
