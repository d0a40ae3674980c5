"""A pool's source: local folders and file:// URIs in place, fsspec URIs staged file by file;
img2dataset's _stats.json compared with what the manifest read."""
from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest

from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.ingest.sources import (img2dataset_stats, is_local, local_path, redact, resolve_source, scrub,
                                                 stats_mismatches)
from dynamics_assets.core.ingest.synthetic import generate


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    ds = generate(tmp_path_factory.mktemp("src") / "raw", pairs=360, samples_per_shard=120, eval_per_concept=1, seed=2)
    return [Path(s) for s in ds.shards]


def test_local_paths_and_file_uris_are_used_in_place(shards, tmp_path):
    folder = shards[0].parent
    assert resolve_source(str(folder), tmp_path) == folder.resolve()
    assert resolve_source(f"file://{folder}", tmp_path) == folder.resolve()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source(str(tmp_path / "nowhere"), tmp_path)


def test_an_fsspec_uri_is_staged_file_by_file(shards, tmp_path):
    fs = fsspec.filesystem("memory")
    for s in shards:
        fs.pipe(f"/pool/{s.name}", s.read_bytes())
    fs.pipe("/pool/notes.md", b"not a shard")
    local = resolve_source("memory://pool", tmp_path / "cache")
    assert sorted(p.name for p in local.glob("*.tar")) == sorted(s.name for s in shards)
    assert all((local / s.name).read_bytes() == s.read_bytes() for s in shards)
    assert not (local / "notes.md").exists() and not list(local.glob(".*.part"))
    before = {p.name: p.stat().st_mtime_ns for p in local.glob("*.tar")}
    assert resolve_source("memory://pool", tmp_path / "cache") == local
    assert {p.name: p.stat().st_mtime_ns for p in local.glob("*.tar")} == before, "unchanged files are not fetched again"
    summary = build_manifest(sorted(local.glob("*.tar")), tmp_path / "manifest")
    assert summary.total == 360
    fs.rm("/pool", recursive=True)


def test_img2dataset_stats_mismatch_is_reported(shards, tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    for s in shards:
        (folder / s.name).write_bytes(s.read_bytes())
    (folder / f"{shards[0].stem}_stats.json").write_text(json.dumps({"count": 130, "successes": 120}))
    (folder / f"{shards[1].stem}_stats.json").write_text(json.dumps({"count": 130, "successes": 125}))
    summary = build_manifest(sorted(folder.glob("*.tar")), tmp_path / "manifest")
    rows = {c.shard: c.rows for c in summary.per_shard}
    found = stats_mismatches(img2dataset_stats(folder), rows, [s.name for s in shards])
    assert [(m.shard, m.stated, m.read) for m in found] == [(shards[1].name, 125, 120), (shards[2].name, None, 120)]
    assert "img2dataset wrote 125 samples, the manifest read 120" in found[0].note
    assert stats_mismatches({}, rows, [s.name for s in shards]) == [], "no stats files: nothing to compare"


def test_file_uris_are_parsed_as_urls(tmp_path, monkeypatch):
    odd = tmp_path / "it's a ünïcode dir"
    odd.mkdir()
    assert local_path(odd.as_uri()) == odd  # as_uri percent-encodes the apostrophe, spaces and letters
    assert local_path(f"file://localhost{odd.as_uri()[7:]}") == odd
    assert local_path(f"FILE://LocalHost{tmp_path}") == tmp_path
    assert local_path(f"file:{tmp_path}") == tmp_path
    monkeypatch.chdir(tmp_path)
    assert local_path("rel/dir") == tmp_path / "rel" / "dir"  # a plain path stays relative to the cwd
    for uri, message in [("file://host/x", "names host 'host'"), ("file://u:pw@localhost/x", "no user or password"),
                         ("file:///x#frag", "query or fragment"), ("file:x", "absolute path"),
                         ("s3://bucket/x", "only local folders")]:
        with pytest.raises(ValueError, match=message) as err:
            local_path(uri)
        assert "pw" not in str(err.value)
    assert is_local("/data") and is_local("file:///data") and is_local("File://localhost/data")
    assert not is_local("s3://bucket/x") and not is_local("memory://pool")


@pytest.mark.parametrize("uri, shown", [
    ("https://user:p@ss-word@host:8443/x?sig=abc#f", "https://host:8443/x"),
    ("s3://KEY:se/cr+et@bucket/pool/", "s3://bucket/pool/"),
    ("s3://bucket/folder@v2/x", "s3://bucket/folder@v2/x"),  # an '@' in the path of a URI without credentials
    ("gs://bucket/pool", "gs://bucket/pool"),
    ("http://[::1]:8080/pool", "http://[::1]:8080/pool"),
    ("postgresql://mlflow:pw@db.example:5432/mlflow", "postgresql://db.example:5432/mlflow"),
    ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
    ("/local/path?with#odd", "/local/path?with#odd"),  # not a URI: unchanged
])
def test_redact(uri, shown):
    assert redact(uri) == shown


def test_scrub_removes_every_form_of_the_secret():
    uri = "https://alice:p%40ss-word@host/x?token=tok-123"
    text = (f"GET {uri} failed; BasicAuth(login='alice', password='p@ss-word'); "
            "url=https://alice:p%40ss-word@host/x; token tok-123")
    out = scrub(text, uri)
    assert "p@ss-word" not in out and "p%40ss-word" not in out and "tok-123" not in out
    assert "https://host/x" in out
