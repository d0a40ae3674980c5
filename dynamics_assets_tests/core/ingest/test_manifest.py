"""raw_pairs reader: webdataset shards -> parquet manifest with quarantine (tiny tar fixtures)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dynamics_assets.core.io.versions import verify
from dynamics_assets.core.ingest.manifest import MANIFEST_SCHEMA, OK, QUARANTINED, REASONS, SUMMARY_NAME, build_manifest, content_sample_id, ok_rows, pool_counts, read_shard_manifest
from dynamics_assets.core.io.webdataset import ShardReadError, iter_samples

SPEC_COLUMNS = [
    "sample_id", "shard", "key", "row", "image_member", "text_member", "json_member", "caption",
    "width", "height", "pixels", "image_sha256", "meta_json", "status", "reason", "duplicate_of",
    "image_offset", "image_size", "detail",
]


def png(seed: int, size: int = 32) -> bytes:
    im = Image.new("RGB", (size, size), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    im.putpixel((seed % size, 0), (255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def pair(key: str, seed: int, caption: str | bytes = "a photo", uid: str | None = None) -> list[tuple[str, bytes]]:
    members = [(f"{key}.png", png(seed)), (f"{key}.txt", caption if isinstance(caption, bytes) else caption.encode())]
    if uid is not None:
        members.append((f"{key}.json", json.dumps({"uid": uid, "url": f"http://x/{key}"}).encode()))
    return members


def write_tar(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """Members in the given order; ``None`` data makes a directory entry."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def input_keys(members: list[tuple[str, bytes | None]]) -> list[str]:
    """Distinct sample keys of the file members (folder kept), in order of first appearance."""
    keys = []
    for name, data in members:
        if data is not None:
            folder, slash, base = name.rpartition("/")
            keys.append(folder + slash + base.split(".")[0])
    return list(dict.fromkeys(keys))


def assert_accounting(table, expected_keys: list[str | None]) -> Counter:
    """One row per input key in input order, ok + quarantined == rows, reasons well formed."""
    assert table.schema.names == SPEC_COLUMNS
    assert table.column("key").to_pylist() == expected_keys
    assert table.column("row").to_pylist() == list(range(len(expected_keys)))
    statuses = Counter(table.column("status").to_pylist())
    assert statuses[OK] + statuses[QUARANTINED] == table.num_rows
    for status, reason in zip(table.column("status").to_pylist(), table.column("reason").to_pylist()):
        assert (reason is None) == (status == OK)
        assert reason is None or reason in REASONS
    return statuses


def reasons(table) -> dict[str | None, str | None]:
    return dict(zip(table.column("key").to_pylist(), table.column("reason").to_pylist()))


def test_clean_pairs(tmp_path):
    uid = "ABCDEF0123456789abcdef0123456789"
    members = pair("000000000", 1, "  a red square \n", uid=uid) + pair("000000001", 2, "a dog")
    table = read_shard_manifest(write_tar(tmp_path / "00000.tar", members))
    assert assert_accounting(table, ["000000000", "000000001"]) == {OK: 2}
    assert table.schema == MANIFEST_SCHEMA.with_metadata(table.schema.metadata)
    first, second = table.to_pylist()
    assert first["sample_id"] == uid.lower()
    assert first["caption"] == "a red square"
    assert (first["width"], first["height"]) == (32, 32)
    assert first["image_sha256"] == hashlib.sha256(png(1)).hexdigest()
    assert json.loads(first["meta_json"])["uid"] == uid
    assert (first["image_member"], first["text_member"], first["json_member"]) == (
        "000000000.png", "000000000.txt", "000000000.json")
    assert second["json_member"] is None and second["meta_json"] is None
    assert second["sample_id"] == hashlib.sha256(png(2) + b"\0" + b"a dog").hexdigest()[:32]
    assert {first["shard"], second["shard"]} == {"00000.tar"}


def test_content_id_does_not_depend_on_key_or_position(tmp_path):
    a = write_tar(tmp_path / "a.tar", pair("000000007", 5, "same pair"))
    b_members = pair("000123456", 9, "other") + pair("000123457", 5, "same pair\n", uid="not-a-valid-uid")
    b = write_tar(tmp_path / "b.tar", b_members)
    table_a, table_b = read_shard_manifest(a), read_shard_manifest(b)
    assert_accounting(table_a, ["000000007"])
    assert_accounting(table_b, ["000123456", "000123457"])
    expected = content_sample_id(png(5), "same pair")
    assert expected == hashlib.sha256(png(5) + b"\0same pair").hexdigest()[:32]
    assert table_a.column("sample_id")[0].as_py() == expected
    assert table_b.column("sample_id")[1].as_py() == expected
    assert table_b.column("sample_id")[0].as_py() != expected


def test_bad_samples_are_quarantined_with_a_reason(tmp_path):
    truncated_png = png(3)[: len(png(3)) // 2]
    members = [
        *pair("ok", 1),
        ("corrupt.png", b"definitely not an image"), ("corrupt.txt", b"x"),
        ("undecodable.png", truncated_png), ("undecodable.txt", b"x"),
        ("empty.png", png(4)), ("empty.txt", b"  \n"),
        ("nocaption.png", png(5)),
        ("noimage.txt", b"a caption"), ("noimage.json", b"{}"),
        *pair("badjson", 6), ("badjson.json", b"{not json"),
        *pair("listjson", 7), ("listjson.json", b"[1, 2]"),
        ("latin1.png", png(8)), ("latin1.txt", "caf\xe9".encode("latin-1")),
        *pair("twoimages", 9), ("twoimages.jpg", png(10)),
        *pair("twice", 11), ("twice.png", png(12)),
        *pair("extra", 13), ("extra.cls", b"7"), ("extra.URL.txt", b"http://x"),
        ("sub", None), *pair("sub/inner", 14),
    ]
    path = write_tar(tmp_path / "bad.tar", members)
    table = read_shard_manifest(path)
    keys = input_keys(members)
    statuses = assert_accounting(table, keys)
    assert reasons(table) == {
        "ok": None, "corrupt": "corrupt_image", "undecodable": "corrupt_image",
        "empty": "empty_caption", "nocaption": "missing_caption", "noimage": "missing_image",
        "badjson": "bad_json", "listjson": "bad_json", "latin1": "bad_caption",
        "twoimages": "multiple_images", "twice": "duplicate_member", "extra": None,
        "sub/inner": None,
    }
    assert statuses == {OK: 3, QUARANTINED: 10}
    by_key = {r["key"]: r for r in table.to_pylist()}
    assert by_key["sub/inner"]["image_member"] == "sub/inner.png"
    assert by_key["empty"]["caption"] == "" and by_key["nocaption"]["caption"] is None
    # Without full decoding, a PNG with a valid header but cut data passes; garbage does not.
    unverified = reasons(read_shard_manifest(path, verify_images=False))
    assert unverified["undecodable"] is None and unverified["corrupt"] == "corrupt_image"
    extra = next(s for s in iter_samples(path) if s.key == "extra")
    assert set(extra.members) == {"png", "txt", "cls", "url.txt"}


def test_non_consecutive_members_are_one_quarantined_row(tmp_path):
    members = [("a.png", png(1)), *pair("b", 2), ("a.txt", b"late caption"), *pair("c", 3)]
    path = write_tar(tmp_path / "split.tar", members)
    table = read_shard_manifest(path)
    assert_accounting(table, ["a", "b", "c"])
    assert reasons(table) == {"a": "non_consecutive_members", "b": None, "c": None}
    assert [(s.key, s.row) for s in iter_samples(path)] == [("a", 0), ("b", 1), ("a", 0), ("c", 2)]


def _five_pair_shard(tmp_path: Path) -> tuple[Path, bytes, dict[str, tarfile.TarInfo]]:
    members = [m for i in range(5) for m in pair(f"{i:09d}", i + 1, f"caption {i}")]
    path = write_tar(tmp_path / "cut.tar", members)
    with tarfile.open(path) as tar:
        infos = {info.name: info for info in tar}
    return path, path.read_bytes(), infos


def test_truncated_inside_a_member(tmp_path):
    path, data, infos = _five_pair_shard(tmp_path)
    cut = infos["000000003.png"].offset_data + infos["000000003.png"].size // 2
    path.write_bytes(data[:cut])
    samples = list(iter_samples(path))
    assert [s.truncated for s in samples] == [False, False, False, True]
    table = read_shard_manifest(path)
    statuses = assert_accounting(table, [f"{i:09d}" for i in range(4)])
    assert statuses == {OK: 3, QUARANTINED: 1}
    assert reasons(table)["000000003"] == "truncated_tar"


@pytest.mark.parametrize("cut_at", ["header_of_sample_3", "end_of_archive_marker", "inside_a_header"])
def test_truncated_where_tarfile_itself_stops_silently(tmp_path, cut_at):
    path, data, infos = _five_pair_shard(tmp_path)
    last = infos["000000004.txt"]
    cut = {
        "header_of_sample_3": infos["000000003.png"].offset,
        "end_of_archive_marker": last.offset_data + 512,  # member data padded to one block
        "inside_a_header": infos["000000003.png"].offset + 100,
    }[cut_at]
    path.write_bytes(data[:cut])
    table = read_shard_manifest(path)
    n_keys = 5 if cut_at == "end_of_archive_marker" else 3
    statuses = assert_accounting(table, [f"{i:09d}" for i in range(n_keys)])
    assert statuses == {OK: n_keys - 1, QUARANTINED: 1}  # the last key may have lost members
    assert table.column("reason")[n_keys - 1].as_py() == "truncated_tar"


def test_truncated_before_any_file_member_gives_a_keyless_tail_row(tmp_path):
    path = write_tar(tmp_path / "dirs.tar", [("folder", None), *pair("folder/x", 1)])
    with tarfile.open(path) as tar:
        cut = tar.getmember("folder/x.png").offset + 10
    path.write_bytes(path.read_bytes()[:cut])
    table = read_shard_manifest(path)
    assert_accounting(table, [None])
    assert reasons(table) == {None: "truncated_tar"}


def test_empty_shard(tmp_path):
    path = write_tar(tmp_path / "empty.tar", [])
    table = read_shard_manifest(path)
    assert table.num_rows == 0 and table.schema.names == SPEC_COLUMNS
    summary = build_manifest([path], tmp_path / "m")
    assert summary.empty_shards == ["empty.tar"] and summary.total == 0
    assert pool_counts(tmp_path / "m") == [("empty.tar", 0)]


@pytest.mark.parametrize("content", [b"", b"this is not a tar file at all" * 40])
def test_not_a_tar_gives_one_unreadable_shard_row(tmp_path, content):
    path = tmp_path / "junk.tar"
    path.write_bytes(content)
    with pytest.raises(ShardReadError, match="junk.tar"):
        next(iter_samples(path))
    table = read_shard_manifest(path)
    assert_accounting(table, [None])
    assert reasons(table) == {None: "unreadable_shard"}
    good = write_tar(tmp_path / "good.tar", pair("k", 1))
    summary = build_manifest([path, good], tmp_path / "m")
    assert (summary.total, summary.ok, summary.by_reason) == (2, 1, {"unreadable_shard": 1})


def test_duplicates_within_a_shard(tmp_path):
    uid, other_uid = "0123456789abcdef0123456789abcdef", "f" * 32
    members = [
        *pair("a", 1, "same"), ("a.json", b"{broken"),  # a quarantined copy is not the original
        *pair("b", 1, "same"), *pair("c", 2, "other"), *pair("d", 1, " same "),
        *pair("e", 3, "x", uid=uid),
        *pair("f", 4, "y", uid=uid.upper()),  # another pair under the same uid
        *pair("g", 3, "x", uid=other_uid),  # a re-crawled copy of e: its own uid, same content
    ]
    table = read_shard_manifest(write_tar(tmp_path / "dups.tar", members))
    statuses = assert_accounting(table, input_keys(members))
    assert statuses == {OK: 3, QUARANTINED: 4}
    assert reasons(table) == {"a": "bad_json", "b": None, "c": None, "d": "exact_duplicate",
                              "e": None, "f": "duplicate_sample_id", "g": "exact_duplicate"}
    rows = {r["key"]: r for r in table.to_pylist()}
    assert rows["d"]["duplicate_of"] == rows["b"]["sample_id"] == content_sample_id(png(1), "same")
    assert (rows["f"]["sample_id"], rows["f"]["duplicate_of"]) == (uid, uid)
    assert (rows["g"]["sample_id"], rows["g"]["duplicate_of"]) == (other_uid, uid)
    assert rows["b"]["duplicate_of"] is None


def _stat_ns(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_ino


def test_cross_shard_duplicates_resume_and_pool_order(tmp_path):
    shards, out = tmp_path / "shards", tmp_path / "manifest"
    shards.mkdir()
    shared_uid = "a1" * 16
    b = write_tar(shards / "b.tar", pair("b0", 1, "shared", uid="b0" * 16) + pair("b1", 2, "only b"))
    a = write_tar(shards / "a.tar", pair("a0", 3, "only a") + pair("a1", 1, "shared", uid=shared_uid))
    c = write_tar(shards / "c.tar", pair("c0", 4, "only c"))

    summary = build_manifest([c, b, a], tmp_path / "manifest")
    out = summary.version_dir  # the committed version; tmp_path / "manifest" is the artefact root
    assert (summary.total, summary.ok, summary.quarantined) == (5, 4, 1)
    assert summary.by_reason == {"exact_duplicate": 1}
    assert sorted(summary.read_shards) == ["a.tar", "b.tar", "c.tar"]
    assert summary.rewritten_shards == ["b.tar"]
    assert [(s.shard, s.rows, s.ok) for s in summary.per_shard] == [("a.tar", 2, 2), ("b.tar", 2, 1), ("c.tar", 1, 1)]
    manifest_b = pq.read_table(out / "b.parquet")
    assert_accounting(manifest_b, ["b0", "b1"])
    assert (manifest_b["reason"][0].as_py(), manifest_b["duplicate_of"][0].as_py()) == ("exact_duplicate", shared_uid)
    assert pq.read_schema(out / "b.parquet").metadata == read_shard_manifest(b).schema.metadata
    assert json.loads((out / SUMMARY_NAME).read_text()) == summary.to_json()

    assert pool_counts(out) == [("a.tar", 2), ("b.tar", 1), ("c.tar", 1)]
    tables = list(ok_rows(out))
    assert [t.num_rows for t in tables] == [2, 1, 1]
    pool = [(r["shard"], r["row"], r["key"]) for t in tables for r in t.to_pylist()]
    assert pool == [("a.tar", 0, "a0"), ("a.tar", 1, "a1"), ("b.tar", 1, "b1"), ("c.tar", 0, "c0")]
    assert tables[0].column_names == ["sample_id", "shard", "row", "key", "image_member", "caption"]

    # Resume: nothing changed -> no manifest rewritten, same summary bytes.
    before = {p.name: _stat_ns(p) for p in out.iterdir()}
    summary_bytes = (out / SUMMARY_NAME).read_bytes()
    again = build_manifest([a, b, c], tmp_path / "manifest")
    assert again.version_dir == out  # same content, same version
    assert (again.read_shards, again.rewritten_shards) == ([], [])
    assert sorted(again.reused_shards) == ["a.tar", "b.tar", "c.tar"]
    assert {p.name: _stat_ns(p) for p in out.iterdir() if p.suffix == ".parquet"} == {
        k: v for k, v in before.items() if k.endswith(".parquet")}
    assert (out / SUMMARY_NAME).read_bytes() == summary_bytes

    # Changing a.tar (the shared pair removed) re-reads only a.tar and lifts b.tar's mark.
    write_tar(a, pair("a0", 3, "only a") + pair("a2", 5, "new in a"))
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))
    third = build_manifest([a, b, c], tmp_path / "manifest")
    assert third.version_dir != out and not verify(out)  # the old version is untouched
    assert os.stat(third.version_dir / "c.parquet").st_ino == os.stat(out / "c.parquet").st_ino  # hardlinked
    out = third.version_dir
    assert (third.read_shards, third.rewritten_shards) == (["a.tar"], ["b.tar"])
    assert (third.total, third.ok, third.quarantined) == (5, 5, 0)
    manifest_b = pq.read_table(out / "b.parquet")
    assert assert_accounting(manifest_b, ["b0", "b1"]) == {OK: 2}
    assert manifest_b["duplicate_of"].null_count == 2


def test_shards_added_by_a_later_call_are_deduplicated_against_the_pool(tmp_path):
    out = tmp_path / "m"
    first = write_tar(tmp_path / "00001.tar", pair("x", 1, "dup"))
    build_manifest([first], out)
    earlier_name = write_tar(tmp_path / "00000.tar", pair("y", 1, "dup"))
    summary = build_manifest([earlier_name], out)
    assert summary.rewritten_shards == ["00001.tar"]
    assert [(s.shard, s.ok, s.quarantined) for s in summary.per_shard] == [("00000.tar", 1, 0), ("00001.tar", 0, 1)]


def test_accounting_violation_raises(tmp_path):
    import json

    from dynamics_assets.core.io.hashing import file_sha256

    out = tmp_path / "m"
    path = write_tar(tmp_path / "s.tar", pair("k", 1))
    version = build_manifest([path], out).version_dir
    table = pq.read_table(version / "s.parquet")
    i = table.schema.get_field_index("status")
    bogus = table.set_column(i, table.schema.field(i), pa.array(["maybe"], pa.string()))
    pq.write_table(bogus, version / "s.parquet")
    # a committed version whose writer was wrong, its record matching the bad bytes (an edit in place
    # alone no longer gets this far: a carried-over manifest whose hash differs is read again)
    info = json.loads((version / "_version.json").read_text())
    info["files"]["s.parquet"] = {"sha256": file_sha256(version / "s.parquet"),
                                  "size": (version / "s.parquet").stat().st_size}
    (version / "_version.json").write_text(json.dumps(info))
    with pytest.raises(RuntimeError, match=r"s\.tar.*ok \(0\) \+ quarantined \(0\) != rows \(1\)"):
        build_manifest([path], out)


def test_shards_with_the_same_stem_are_rejected(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    one = write_tar(tmp_path / "x" / "s.tar", pair("k", 1))
    two = write_tar(tmp_path / "y" / "s.tar", pair("k", 2))
    with pytest.raises(ValueError, match="s.parquet"):
        build_manifest([one, two], tmp_path / "m")


def test_image_offsets_point_at_the_image_bytes(tmp_path):
    """Loaders seek straight to an image with the recorded offset and size."""
    from dynamics_assets.core.io.webdataset import read_ranges

    shard = write_tar(tmp_path / "s.tar", [("a.png", png(1)), ("a.txt", b"x"), ("b.png", png(2)), ("b.txt", b"y")])
    table = read_shard_manifest(shard)
    ranges = zip(table["image_offset"].to_pylist(), table["image_size"].to_pylist())
    assert read_ranges(shard, ranges) == [png(1), png(2)]
