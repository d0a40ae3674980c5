"""Landing of raw shards: complete-tar check, folder listing and the settle-twice sensor step (landing.py)."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from dynamics_assets.core.ingest.landing import BLOCK, END_OF_ARCHIVE, LandingCursor, Observation, advance, local_folder, observe, tar_problem


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, members: list[tuple[str, bytes]] | None = None) -> bytes:
    """A complete tar written by ``tarfile`` (padded to its 10 KiB record); returns its bytes."""
    members = members if members is not None else [
        ("000.jpg", b"\xff\xd8" + b"x" * 1500),  # 3 data blocks
        ("000.txt", b"a red square"),
        ("001.jpg", b"\xff\xd8" + b"y" * 700),  # 2 data blocks
        ("001.txt", b"a blue circle"),
    ]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            _add(tar, name, data)
    return path.read_bytes()


def _last_member_end(path: Path) -> int:
    with tarfile.open(path, "r:") as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + -(-last.size // BLOCK) * BLOCK


def _cut(src: bytes, size: int, path: Path) -> Path:
    path.write_bytes(src[:size])
    return path


# ----------------------------------------------------------------------------- tar_problem


def test_complete_tar_has_no_problem(tmp_path):
    data = write_tar(tmp_path / "a.tar")
    assert len(data) % BLOCK == 0 and len(data) > END_OF_ARCHIVE
    assert tar_problem(tmp_path / "a.tar") is None
    # a minimal tar: exactly the last member followed by the two zero blocks, no record padding
    end = _last_member_end(tmp_path / "a.tar")
    assert tar_problem(_cut(data, end + END_OF_ARCHIVE, tmp_path / "min.tar")) is None


def test_truncated_tars_have_problems(tmp_path):
    data = write_tar(tmp_path / "a.tar")
    end = _last_member_end(tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        first_jpg = tar.getmembers()[0]
    assert first_jpg.size > 2 * BLOCK

    mid_block = {100, BLOCK + 1, end - 1}
    for size in mid_block:
        problem = tar_problem(_cut(data, size, tmp_path / "cut.tar"))
        assert problem is not None and "mid-block" in problem, size

    block_aligned = {
        BLOCK,  # only the first header: smaller than an end-of-archive marker
        first_jpg.offset_data + BLOCK,  # at a 512 boundary inside the first member's data
        end,  # the last member is whole, the end-of-archive marker not written yet
        end + BLOCK,  # one of the two zero blocks written
    }
    for size in block_aligned:
        assert size % BLOCK == 0
        problem = tar_problem(_cut(data, size, tmp_path / "cut.tar"))
        assert problem is not None, size
    assert "smaller than" in tar_problem(_cut(data, BLOCK, tmp_path / "cut.tar"))
    assert "end-of-archive" in tar_problem(_cut(data, end, tmp_path / "cut.tar"))
    assert "end-of-archive" in tar_problem(_cut(data, end + BLOCK, tmp_path / "cut.tar"))


def test_empty_file(tmp_path):
    (tmp_path / "e.tar").write_bytes(b"")
    assert tar_problem(tmp_path / "e.tar") == "empty file"


def test_garbage_header_with_zero_tail_is_unreadable(tmp_path):
    """Block-aligned, ends with two zero blocks, but the first header is not a tar header: the header
    walk (tarfile) refuses it."""
    garbage = b"this is not a tar header" + b"\x01" * (BLOCK - 24)
    (tmp_path / "g.tar").write_bytes(garbage + b"\0" * END_OF_ARCHIVE)
    problem = tar_problem(tmp_path / "g.tar")
    assert problem is not None and problem.startswith("tar headers unreadable")


def test_all_zero_file_is_an_empty_archive(tmp_path):
    """Real behaviour: a file of zero blocks is a valid (empty) tar, so ``tar_problem`` accepts it.
    Only the settle-twice rule of ``advance`` guards against a writer that pre-allocates zeros."""
    (tmp_path / "z.tar").write_bytes(b"\0" * (4 * BLOCK))
    assert tar_problem(tmp_path / "z.tar") is None


def test_member_ending_in_zeros_cut_after_it_is_caught_by_the_header_walk(tmp_path):
    """The last member's data ends with >= 1024 zero bytes and the archive is cut right after that
    member, before the end-of-archive marker: the file's tail *looks* like the marker, but the header
    walk finds the member running into it, so ``tar_problem`` reports it (``advance`` need not rely on
    the settle rule here). A cut at a block boundary *inside* those zeros is reported too."""
    data = write_tar(tmp_path / "z.tar", [("000.txt", b"cap"), ("000.npy", b"\x93NUMPY" + b"\0" * 3000)])
    end = _last_member_end(tmp_path / "z.tar")
    assert data[end - END_OF_ARCHIVE : end].strip(b"\0") == b""  # the tail looks like a marker

    cut = _cut(data, end, tmp_path / "cut.tar")
    problem = tar_problem(cut)
    assert problem is not None and "past the end-of-archive marker" in problem

    inside = _cut(data, end - BLOCK, tmp_path / "inside.tar")
    assert tar_problem(inside) is not None

    # the same, once the marker is written, is complete
    assert tar_problem(_cut(data, end + END_OF_ARCHIVE, tmp_path / "whole.tar")) is None

    # and advance never offers the cut file: it is settled but still has a problem
    folder = tmp_path / "land"
    folder.mkdir()
    cut.rename(folder / "000.tar")
    cursor = LandingCursor()
    for _ in range(3):
        step = advance(cursor, observe(folder), (), folder)
        assert step.ready == [] and "000.tar" in step.waiting
        cursor = step.cursor
    assert "past the end-of-archive marker" in step.waiting["000.tar"]


# ----------------------------------------------------------------------------- observe


def test_observe_lists_visible_tars_by_name(tmp_path):
    for name in ("b.tar", "a.tar", ".partial.tar", "c.tar", "notes.txt", "d.tar.gz", "skipped.tar"):
        (tmp_path / name).write_bytes(b"x" * 10)
    (tmp_path / "dir.tar").mkdir()
    (tmp_path / "a.tar").write_bytes(b"y" * 1024)
    found = observe(tmp_path, skip=["skipped.tar"])
    assert [o.name for o in found] == ["a.tar", "b.tar", "c.tar"]
    st = (tmp_path / "a.tar").stat()
    assert found[0] == Observation("a.tar", 1024, st.st_mtime_ns)
    assert [o.name for o in observe(tmp_path)] == ["a.tar", "b.tar", "c.tar", "skipped.tar"]


# ----------------------------------------------------------------------------- advance / cursor


def _bump_mtime(path: Path, seconds: int = 10) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_complete_shard_is_ready_at_the_second_look(tmp_path):
    write_tar(tmp_path / "000.tar")
    first = advance(LandingCursor(), observe(tmp_path), (), tmp_path)
    assert first.ready == [] and first.waiting["000.tar"].startswith("first seen")
    assert set(first.cursor.seen) == {"000.tar"}

    second = advance(first.cursor, observe(tmp_path), (), tmp_path)
    assert [o.name for o in second.ready] == ["000.tar"] and second.waiting == {}
    assert second.ready[0] == observe(tmp_path)[0]
    assert second.cursor.seen == {}

    # registered: never offered again, whatever the cursor says
    for cursor in (second.cursor, first.cursor, LandingCursor()):
        step = advance(cursor, observe(tmp_path), ["000.tar"], tmp_path)
        assert step.ready == [] and step.waiting == {} and step.cursor.seen == {}


def test_half_written_shard_waits_until_completed_and_settled(tmp_path):
    full = write_tar(tmp_path / "full.tar.part")  # not a *.tar: not observed
    shard = tmp_path / "001.tar"
    _cut(full, 3 * BLOCK, shard)  # block-aligned, inside the first member's data

    cursor = LandingCursor()
    step = advance(cursor, observe(tmp_path), (), tmp_path)
    assert step.waiting["001.tar"].startswith("first seen")
    for _ in range(2):  # settled but incomplete: waits with the tar problem as its reason
        step = advance(step.cursor, observe(tmp_path), (), tmp_path)
        assert step.ready == [] and step.waiting == {"001.tar": tar_problem(shard)}
        assert "001.tar" in step.cursor.seen

    shard.write_bytes(full)  # the writer finishes
    _bump_mtime(shard)
    step = advance(step.cursor, observe(tmp_path), (), tmp_path)
    assert step.ready == [] and step.waiting["001.tar"].startswith("still changing")
    step = advance(step.cursor, observe(tmp_path), (), tmp_path)
    assert [o.name for o in step.ready] == ["001.tar"] and step.waiting == {}


def test_mtime_change_alone_restarts_the_wait(tmp_path):
    write_tar(tmp_path / "000.tar")
    step = advance(LandingCursor(), observe(tmp_path), (), tmp_path)
    _bump_mtime(tmp_path / "000.tar")
    step = advance(step.cursor, observe(tmp_path), (), tmp_path)
    assert step.ready == [] and step.waiting["000.tar"].startswith("still changing")
    step = advance(step.cursor, observe(tmp_path), (), tmp_path)
    assert [o.name for o in step.ready] == ["000.tar"]


def test_cursor_json_round_trip():
    cursor = LandingCursor({"b.tar": (1024, 5), "a.tar": (10240, 1_700_000_000_123_456_789)}, ("x.tar", "y.tar"))
    text = cursor.to_json()
    assert json.loads(text) == {"seen": {"a.tar": [10240, 1_700_000_000_123_456_789], "b.tar": [1024, 5]},
                                "ingesting": ["x.tar", "y.tar"]}
    back = LandingCursor.from_json(text)
    assert back == cursor and back.seen["a.tar"] == (10240, 1_700_000_000_123_456_789)
    assert LandingCursor.from_json(None) == LandingCursor() == LandingCursor.from_json("")
    assert LandingCursor.from_json(None).seen == {} and LandingCursor.from_json(None).ingesting == ()


def test_advance_keeps_ingesting(tmp_path):
    write_tar(tmp_path / "000.tar")
    step = advance(LandingCursor({}, ("old.tar",)), observe(tmp_path), ["old.tar"], tmp_path)
    assert step.cursor.ingesting == ("old.tar",)


def test_shard_landing_while_nothing_looks_is_found_after_a_restart(tmp_path):
    """The cursor is persisted as JSON between looks (as a sensor does); shards that land between
    runs are found at the next two looks from the restored cursor."""
    write_tar(tmp_path / "000.tar")
    stored = LandingCursor.from_json(None).to_json()
    step = advance(LandingCursor.from_json(stored), observe(tmp_path), (), tmp_path)
    step = advance(LandingCursor.from_json(step.cursor.to_json()), observe(tmp_path), (), tmp_path)
    assert [o.name for o in step.ready] == ["000.tar"]
    registered = ["000.tar"]
    stored = LandingCursor(step.cursor.seen, step.cursor.ingesting + ("000.tar",)).to_json()

    # the process stops; meanwhile two shards land, one of them still being written
    write_tar(tmp_path / "001.tar")
    partial = write_tar(tmp_path / "002.tar")
    _cut(partial, len(partial) // 2 // BLOCK * BLOCK, tmp_path / "002.tar")

    first = advance(LandingCursor.from_json(stored), observe(tmp_path), registered, tmp_path)
    assert first.ready == [] and set(first.waiting) == {"001.tar", "002.tar"}
    assert first.cursor.ingesting == ("000.tar",)
    second = advance(LandingCursor.from_json(first.cursor.to_json()), observe(tmp_path), registered, tmp_path)
    assert [o.name for o in second.ready] == ["001.tar"]
    assert second.waiting == {"002.tar": tar_problem(tmp_path / "002.tar")}
    assert second.cursor.ingesting == ("000.tar",)


# ----------------------------------------------------------------------------- local_folder


def test_local_folder(tmp_path, monkeypatch):
    assert local_folder(tmp_path) == tmp_path.resolve()
    assert local_folder(str(tmp_path / "raw")) == (tmp_path / "raw").resolve()
    assert local_folder(f"file://{tmp_path}/raw") == (tmp_path / "raw").resolve()
    assert local_folder((tmp_path / "raw").resolve().as_uri()) == (tmp_path / "raw").resolve()
    monkeypatch.chdir(tmp_path)
    assert local_folder("rel/dir") == tmp_path.resolve() / "rel" / "dir"
    for uri in ("s3://bucket", "s3://bucket/raw", "gs://b/x", "http://host/x"):
        with pytest.raises(ValueError, match="only local folders"):
            local_folder(uri)
