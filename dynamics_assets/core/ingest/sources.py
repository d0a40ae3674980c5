"""Where a pool's shards come from: a local folder, a ``file://`` URI, or any fsspec URI.

``resolve_source`` turns the user's ``source`` into a local folder of ``.tar`` shards:

* a path or ``file://`` URI is used in place (never copied);
* another fsspec scheme (``s3://``, ``gs://``, ``memory://``, … — whatever filesystem fsspec /
  universal-pathlib can open; cloud ones need their fsspec package, e.g. ``s3fs``) is staged into
  ``cache_dir/<scheme>/<sha of the URI>/``, file by file and streamed in 8 MiB blocks (never a whole
  pool in memory), each file written to a temporary name and renamed when complete; a file whose
  size matches the remote one is not fetched again. The manifest, the loader's byte offsets and the
  landing sensor then work on the local copy.

img2dataset writes ``<shard>_stats.json`` beside each shard (``successes`` = samples written).
``img2dataset_stats`` reads them and ``stats_mismatches`` compares them with what the manifest
read, so a shard that lost samples on the way (a truncated copy, an interrupted download) is
reported.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

BLOCK = 1 << 23
SHARD_SUFFIXES = (".tar",)


def is_local(source: str) -> bool:
    return "://" not in source or source.startswith("file://")


def resolve_source(source: str, cache_dir: str | os.PathLike) -> Path:
    """A local folder holding the source's shards (see the module docstring)."""
    if is_local(source):
        from dynamics_assets.core.ingest.landing import local_folder

        folder = local_folder(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"source folder {folder} does not exist")
        return folder
    return stage_remote(source, Path(cache_dir))


def stage_remote(uri: str, cache_dir: Path) -> Path:
    from upath import UPath

    remote = UPath(uri)
    if not remote.is_dir():
        raise FileNotFoundError(f"source {uri} is not a folder this machine can list")
    scheme = uri.split("://", 1)[0]
    local = cache_dir / scheme / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    wanted = sorted(p for p in remote.iterdir() if p.name.endswith(SHARD_SUFFIXES) or p.name.endswith("_stats.json"))
    if not any(p.name.endswith(SHARD_SUFFIXES) for p in wanted):
        raise FileNotFoundError(f"no .tar shards in {uri}")
    for src in wanted:
        dest = local / src.name
        size = src.stat().st_size
        if dest.exists() and dest.stat().st_size == size:
            continue
        tmp = local / f".{src.name}.part"
        with src.open("rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(BLOCK):
                fout.write(block)
        if tmp.stat().st_size != size:
            raise OSError(f"{uri}/{src.name}: fetched {tmp.stat().st_size} bytes, the source lists {size}")
        os.replace(tmp, dest)
    (local / "SOURCE").write_text(uri + "\n")
    return local


def img2dataset_stats(folder: str | os.PathLike) -> dict[str, dict]:
    """``{shard file name: stats}`` from img2dataset's ``<stem>_stats.json`` files (unreadable ones
    are reported as ``{"error": …}``)."""
    out = {}
    for path in sorted(Path(folder).glob("*_stats.json")):
        shard = path.name[: -len("_stats.json")] + ".tar"
        try:
            out[shard] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            out[shard] = {"error": f"{path.name}: {e}"}
    return out


@dataclass(frozen=True)
class StatsMismatch:
    shard: str
    stated: int | None  # img2dataset's successes (None: no or unreadable stats file)
    read: int  # manifest rows read from the shard
    note: str


def stats_mismatches(stats: Mapping[str, dict], rows_per_shard: Mapping[str, int],
                     shards: Iterable[str]) -> list[StatsMismatch]:
    """Shards whose manifest row count differs from img2dataset's ``successes`` (only shards that
    have a stats file are compared; with no stats file at all nothing is reported)."""
    if not stats:
        return []
    out = []
    for shard in shards:
        s = stats.get(shard)
        read = int(rows_per_shard.get(shard, 0))
        if s is None:
            out.append(StatsMismatch(shard, None, read, "no _stats.json beside it"))
        elif "error" in s:
            out.append(StatsMismatch(shard, None, read, s["error"]))
        elif int(s.get("successes", read)) != read:
            out.append(StatsMismatch(shard, int(s["successes"]), read,
                                     f"img2dataset wrote {s['successes']} samples, the manifest read {read}"))
    return out
