"""The webdataset export's per-sample ``.json`` keeps the source sample's own ``.json`` fields
(img2dataset / DataComp: ``uid``, ``url``, ``sha256``, ...) beside the export's provenance fields
(issue 18: the export dropped ``uid`` and ``url``)."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image

from dynamics_assets.core.export.webdataset import export_plan
from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.sample.base import Plan
from dynamics_assets.core.sample.plan_io import write_plan

POOL = "pool-version-a"


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 50, 100)).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _source_json(r: int) -> dict | None:
    """img2dataset-style metadata; sample 2 has none, sample 3 has a field named like ours."""
    if r == 2:
        return None
    meta = {"uid": f"{r:032x}", "url": f"https://example.com/img/{r}.png", "key": f"00000{r:04d}",
            "status": "success", "width": 8, "height": 8, "caption": f"a thing number {r}",
            "exif": {"Make": "x"}, "similarity": 0.25 + r / 100}
    if r == 3:
        meta["copy"] = "© someone"  # a source field with one of the export's names
    return meta


def _read(path) -> dict[str, dict]:
    with tarfile.open(path) as tar:
        return {m.name[:-len(".json")]: json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")}


def test_export_json_keeps_the_source_fields(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "00000.tar", "w") as tar:
        for r in range(5):
            key = f"00000{r:04d}"
            _add(tar, f"{key}.png", _png(40 * r))
            _add(tar, f"{key}.txt", f"a thing number {r}".encode())
            if (meta := _source_json(r)) is not None:
                _add(tar, f"{key}.json", json.dumps(meta).encode())
    manifest = build_manifest([shards / "00000.tar"], tmp_path / "raw_pairs").version_dir
    # every pool position, sample 1 twice
    plan = Plan(np.arange(5, dtype=np.uint32), np.array([1, 2, 1, 1, 1], np.uint16), np.array([5]),
                np.array([6.0]), np.array([6]), {"recipe": "test.s0", "epoch": 0, "strategy": "hand"})
    plan_dir = write_plan(tmp_path / "plan", plan, pool_version=POOL)
    exp = export_plan(plan_dir, manifest, shards, tmp_path / "export", pool=POOL, workers=1, batch_size=2)
    written = _read(exp.version_dir / exp.shards[0])
    assert len(written) == 6
    by_row = {}
    for key, meta in written.items():
        assert key == f"{meta['sample_id']}_{meta['copy']}"
        by_row.setdefault(meta["source_row"], []).append(meta)
    for r in (0, 1, 4):
        source = _source_json(r)
        for meta in by_row[r]:
            assert {k: meta[k] for k in source} == source, "every source field, unchanged"
            assert meta["sample_id"] == source["uid"]  # the manifest's id is the source's uid
            assert meta["source_key"] == source["key"] and meta["multiplicity"] == (2 if r == 1 else 1)
    assert sorted(m["copy"] for m in by_row[1]) == [0, 1]
    # no source .json: only the export's fields
    assert set(by_row[2][0]) == {"sample_id", "pool_index", "source_shard", "source_row", "source_key", "copy",
                                 "multiplicity"}
    # a source field named like one of the export's is kept, under source_meta, not overwritten
    (clashing,) = by_row[3]
    assert clashing["copy"] == 0 and clashing["source_meta"] == {"copy": "© someone"}
    assert clashing["url"] == "https://example.com/img/3.png" and clashing["uid"] == f"{3:032x}"
