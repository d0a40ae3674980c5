"""Fault probes of ingestion: shards and samples that are broken, hostile or odd, through the
manifest (``read_shard_manifest`` / ``build_manifest``), the landing sensor's completeness rule
(``tar_problem``) and the pair readers (``collate``). Every probe asserts its exact outcome and that
every input sample is accounted for: input = kept + quarantined."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision import transforms

from dynamics_assets.core.ingest import manifest as manifest_mod
from dynamics_assets.core.ingest.images import MAX_PIXELS
from dynamics_assets.core.ingest.landing import LandingCursor, advance, observe, tar_problem
from dynamics_assets.core.ingest.manifest import OK, QUARANTINED, REASONS, build_manifest, content_sample_id, read_shard_manifest
from dynamics_assets.core.ingest.pool import Pair, collate

BAD_NAME = b"caf\xe9".decode("utf-8", "surrogateescape")  # a Latin-1 byte: not UTF-8


# ----------------------------------------------------------------------------- fixtures


def png(seed: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB pixels, with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def png_text_bomb() -> bytes:
    """A valid 16x16 PNG with a 2-kB zTXt chunk that inflates to 64 MiB."""
    data = png(1)
    ztxt = _chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * (64 << 20), 9))
    return data[:33] + ztxt + data[33:]  # after the signature (8) and IHDR (25)


def pair(key: str, seed: int, caption: bytes = b"a photo") -> list[tuple[str, bytes]]:
    return [(f"{key}.png", png(seed)), (f"{key}.txt", caption)]


def write_tar(path: Path, members: list[tuple[str, object]], compress: str | None = None) -> Path:
    """Members in order: ``(name, bytes)`` a file; ``(name, ("sym"|"hard", target))`` a link;
    ``(name, ("dir",))``, ``(name, ("fifo",))``, ``(name, ("chr",))`` the other member types."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, bytes):
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            kind, *target = data
            info.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE,
                         "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]
            if target:
                info.linkname = target[0]
            tar.addfile(info)
    raw = buf.getvalue()
    packed = {None: lambda b: b, "gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[compress](raw)
    path.write_bytes(packed)
    return path


def accounted(table, n_input: int) -> Counter:
    """input = kept + quarantined: one row per input sample, each ok or quarantined with one reason."""
    statuses = Counter(table.column("status").to_pylist())
    assert table.num_rows == n_input == statuses[OK] + statuses[QUARANTINED], (table.num_rows, n_input, statuses)
    for status, reason in zip(table.column("status").to_pylist(), table.column("reason").to_pylist()):
        assert (reason is None) == (status == OK) and (reason is None or reason in REASONS)
    return statuses


def reasons(table) -> dict:
    return dict(zip(table.column("key").to_pylist(), table.column("reason").to_pylist()))


def row(table, key) -> dict:
    return next(r for r in table.to_pylist() if r["key"] == key)


# ----------------------------------------------------------------------------- samples


def test_valid_pairs(tmp_path, record):
    """valid pairs"""
    table = read_shard_manifest(write_tar(tmp_path / "s.tar", pair("a", 1) + pair("b", 2)))
    assert accounted(table, 2) == {OK: 2}
    assert (row(table, "a")["width"], row(table, "a")["height"], row(table, "a")["pixels"]) == (16, 16, 256)
    record("ok: 2 of 2 kept, width/height/pixels recorded")


def test_non_utf8_member_name(tmp_path, record):
    """member name that is not valid UTF-8"""
    members = [(f"{BAD_NAME}.png", png(1)), (f"{BAD_NAME}.txt", b"x"), *pair("good", 2)]
    shard = write_tar(tmp_path / "s.tar", members)
    table = read_shard_manifest(shard)
    assert accounted(table, 2) == {OK: 1, QUARANTINED: 1}
    assert reasons(table) == {"caf\\xe9": "bad_member_name", "good": None}
    assert row(table, "caf\\xe9")["image_member"] == "caf\\xe9.png"  # stored escaped
    summary = build_manifest([shard], tmp_path / "m")  # the whole pool is written, nothing raises
    assert (summary.total, summary.ok, summary.by_reason) == (2, 1, {"bad_member_name": 1})
    record("quarantined: bad_member_name (name stored escaped, caf\\xe9.png); the pool's manifest is written")


@pytest.mark.parametrize("kind", ["sym", "hard"])
def test_link_member(tmp_path, record, kind):
    """symbolic or hard link member"""
    target = "/etc/passwd" if kind == "sym" else "a.png"
    members = [*pair("a", 1), ("b.png", (kind, target)), ("b.txt", b"x")]
    table = read_shard_manifest(write_tar(tmp_path / "s.tar", members))
    assert accounted(table, 2) == {OK: 1, QUARANTINED: 1}
    assert reasons(table) == {"a": None, "b": "link_member"}
    assert row(table, "b")["image_member"] is None  # never extracted nor followed
    record("quarantined: link_member (not extracted, not followed)")


@pytest.mark.parametrize("kind", ["fifo", "chr"])
def test_special_member(tmp_path, record, kind):
    """device or fifo member"""
    members = [("a.png", (kind,)), ("a.txt", b"x"), *pair("b", 2)]
    table = read_shard_manifest(write_tar(tmp_path / "s.tar", members))
    assert accounted(table, 2) == {OK: 1, QUARANTINED: 1}
    assert reasons(table) == {"a": "special_member", "b": None}
    record("quarantined: special_member")


def test_directory_member(tmp_path, record):
    """directory member"""
    table = read_shard_manifest(write_tar(tmp_path / "s.tar", [("sub", ("dir",)), *pair("sub/a", 1)]))
    assert accounted(table, 1) == {OK: 1}  # a directory is structure, not a sample
    assert reasons(table) == {"sub/a": None}
    record("skipped (not a sample); the pair inside it kept")


def test_image_over_the_pixel_cap_header(tmp_path, record):
    """144-Mpx PNG header (a few hundred bytes)"""
    members = [("big.png", png_header(12000, 12000)), ("big.txt", b"x"), *pair("b", 2)]
    table = read_shard_manifest(write_tar(tmp_path / "s.tar", members))
    assert accounted(table, 2) == {OK: 1, QUARANTINED: 1}
    big = row(table, "big")
    assert (big["reason"], big["width"], big["height"], big["pixels"]) == ("too_large", 12000, 12000, 144_000_000)
    assert big["detail"] == f"12000x12000 = 144000000 pixels > max_pixels {MAX_PIXELS}"
    record(f"quarantined: too_large (header read, refused before decoding; cap {MAX_PIXELS} px)")


def test_real_image_just_over_the_cap(tmp_path, record):
    """real 67.2-Mpx PNG, just over the cap; accepted under a higher cap"""
    buf = io.BytesIO()
    Image.new("L", (8200, 8200), 7).save(buf, "PNG", compress_level=1)
    shard = write_tar(tmp_path / "s.tar", [("big.png", buf.getvalue()), ("big.txt", b"a map")])
    table = read_shard_manifest(shard, verify_images=False)
    assert accounted(table, 1) == {QUARANTINED: 1}
    assert (row(table, "big")["reason"], row(table, "big")["pixels"]) == ("too_large", 67_240_000)
    raised = read_shard_manifest(shard, verify_images=False, max_pixels=100_000_000)
    assert accounted(raised, 1) == {OK: 1}
    record("quarantined: too_large; ok with max_pixels=100M")


@pytest.mark.parametrize("bomb", ["ztxt_chunk", "header_400mpx_no_cap", "header_100mpx_no_cap"])
def test_decompression_bomb(tmp_path, record, bomb):
    """decompression bomb"""
    data, max_pixels = {
        "ztxt_chunk": (png_text_bomb(), MAX_PIXELS),  # under the default cap
        "header_400mpx_no_cap": (png_header(20000, 20000), None),  # Pillow's DecompressionBombError
        "header_100mpx_no_cap": (png_header(10000, 10000), None),  # Pillow's warning, made an error
    }[bomb]
    members = [("bomb.png", data), ("bomb.txt", b"x"), *pair("b", 2)]
    table = read_shard_manifest(write_tar(tmp_path / "s.tar", members), max_pixels=max_pixels)
    assert accounted(table, 2) == {OK: 1, QUARANTINED: 1}
    assert reasons(table) == {"bomb": "decompression_bomb", "b": None}
    detail = row(table, "bomb")["detail"]
    assert "decompress" in detail.lower()
    record(f"quarantined: decompression_bomb ({detail.split(':')[0]})")


def test_truncated_image(tmp_path, record):
    """truncated image"""
    data = png(3, 64)
    table = read_shard_manifest(write_tar(tmp_path / "s.tar", [("a.png", data[: len(data) // 2]), ("a.txt", b"x")]))
    assert accounted(table, 1) == {QUARANTINED: 1}
    assert row(table, "a")["reason"] == "corrupt_image"
    assert "truncated" in row(table, "a")["detail"]
    record("quarantined: corrupt_image (detail: the decoder's error)")


@pytest.mark.parametrize("case", ["duplicate_member", "non_consecutive_members", "missing_caption", "empty_caption",
                                  "bad_caption", "bad_json", "missing_image", "multiple_images"])
def test_malformed_sample(tmp_path, record, case):
    """malformed sample"""
    members = {
        "duplicate_member": [*pair("a", 1), ("a.png", png(9))],
        "non_consecutive_members": [("a.png", png(1)), *pair("b", 2), ("a.txt", b"late")],
        "missing_caption": [("a.png", png(1))],
        "empty_caption": pair("a", 1, b" \n\t"),
        "bad_caption": pair("a", 1, "caf\xe9".encode("latin-1")),
        "bad_json": [*pair("a", 1), ("a.json", b"{not json")],
        "missing_image": [("a.txt", b"x"), ("a.json", b"{}")],
        "multiple_images": [*pair("a", 1), ("a.jpg", png(2))],
    }[case]
    n_input = 2 if case == "non_consecutive_members" else 1
    table = read_shard_manifest(write_tar(tmp_path / "s.tar", members))
    accounted(table, n_input)
    assert row(table, "a")["reason"] == case
    record(f"quarantined: {case}")


def test_uid_not_a_valid_id(tmp_path, record):
    """uid that is not a valid id"""
    table = read_shard_manifest(write_tar(tmp_path / "s.tar", [*pair("a", 1), ("a.json", b'{"uid": "not-hex"}')]))
    assert accounted(table, 1) == {OK: 1}
    assert row(table, "a")["sample_id"] == content_sample_id(png(1), "a photo")
    record("ok: sample_id from the content (sha256 of image + caption)")


# ----------------------------------------------------------------------------- shards


def _five(tmp_path: Path) -> tuple[Path, bytes, dict[str, tarfile.TarInfo]]:
    path = write_tar(tmp_path / "s.tar", [m for i in range(5) for m in pair(f"{i}", i)])
    with tarfile.open(path) as tar:
        return path, path.read_bytes(), {i.name: i for i in tar}


def test_truncated_tar(tmp_path, record):
    """tar cut inside a member"""
    path, data, infos = _five(tmp_path)
    path.write_bytes(data[: infos["3.png"].offset_data + 20])
    table = read_shard_manifest(path)
    assert accounted(table, 4) == {OK: 3, QUARANTINED: 1}  # samples 0-2 whole, 3 the tail; 4 lost
    assert reasons(table)["3"] == "truncated_tar"
    assert tar_problem(path) is not None
    record("rows read kept; tail quarantined: truncated_tar; landing refuses it")


def test_tar_cut_at_a_header_boundary(tmp_path, record):
    """tar cut exactly at a header boundary"""
    path, data, infos = _five(tmp_path)
    path.write_bytes(data[: infos["3.png"].offset])
    table = read_shard_manifest(path)
    assert accounted(table, 3) == {OK: 2, QUARANTINED: 1}
    assert reasons(table)["2"] == "truncated_tar"  # the last sample may have lost members
    assert "end-of-archive" in tar_problem(path)
    record("last sample quarantined: truncated_tar; landing: no end-of-archive marker")


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 40], ids=["zero_bytes", "random_bytes"])
def test_not_a_tar(tmp_path, record, content):
    """file that is not a tar"""
    path = tmp_path / "s.tar"
    path.write_bytes(content)
    table = read_shard_manifest(path)
    assert accounted(table, 1) == {QUARANTINED: 1}
    assert (table["reason"][0].as_py(), table["key"][0].as_py()) == ("unreadable_shard", None)
    assert "not a readable tar shard" in table["detail"][0].as_py()
    assert tar_problem(path) is not None
    record("one row: unreadable_shard (detail names the file); landing refuses it")


def test_empty_tar(tmp_path, record):
    """empty tar"""
    path = write_tar(tmp_path / "s.tar", [])
    table = read_shard_manifest(path)
    assert accounted(table, 0) == {}
    summary = build_manifest([path], tmp_path / "m")
    assert summary.empty_shards == ["s.tar"] and tar_problem(path) is None
    record("zero rows, listed in empty_shards; landing accepts it")


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_compressed_tar_complete(tmp_path, record, kind):
    """compressed tar named .tar, complete"""
    path = write_tar(tmp_path / "s.tar", pair("a", 1) + pair("b", 2), compress=kind)
    table = read_shard_manifest(path)
    assert accounted(table, 2) == {OK: 2}
    assert table["image_offset"].to_pylist() == [None, None]  # no seekable offsets in a compressed stream
    assert tar_problem(path) is None  # landing and manifest apply the same rule
    record("accepted by landing and manifest: 2 of 2 kept")


def test_compressed_tar_truncated(tmp_path, record):
    """gzip'd tar cut mid-stream"""
    members = [m for i in range(5) for m in pair(f"{i}", i)]
    path = write_tar(tmp_path / "s.tar", members, compress="gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    table = read_shard_manifest(path)
    n = table.num_rows
    assert 1 <= n <= 5
    assert accounted(table, n)[QUARANTINED] == 1 and table["reason"][n - 1].as_py() == "truncated_tar"
    assert "gz-compressed" in tar_problem(path)
    record("rows read kept; tail quarantined: truncated_tar; landing: gz-compressed stream cut")


def test_compressed_tar_missing_its_trailer(tmp_path, record):
    """gzip'd tar cut after the end-of-archive marker (gzip trailer missing)"""
    path = write_tar(tmp_path / "s.tar", pair("a", 1) + pair("b", 2), compress="gz")
    path.write_bytes(path.read_bytes()[:-8])  # CRC and length
    table = read_shard_manifest(path)
    assert accounted(table, 2) == {OK: 1, QUARANTINED: 1}
    assert reasons(table) == {"a": None, "b": "truncated_tar"}
    assert "cut or corrupt" in tar_problem(path)
    record("last sample quarantined: truncated_tar; landing refuses it (same rule)")


def test_bad_name_shard_at_landing(tmp_path, record):
    """landing: shard with a non-UTF-8 member name"""
    folder = tmp_path / "land"
    folder.mkdir()
    path = write_tar(folder / "000.tar", [(f"{BAD_NAME}.png", png(1)), (f"{BAD_NAME}.txt", b"x"), *pair("b", 2)])
    assert tar_problem(path) is None
    step = advance(LandingCursor(), observe(folder), (), folder)
    step = advance(step.cursor, observe(folder), (), folder)
    assert [o.name for o in step.ready] == ["000.tar"]
    summary = build_manifest([path], tmp_path / "m")
    assert (summary.total, summary.ok, summary.by_reason) == (2, 1, {"bad_member_name": 1})
    record("admitted (complete tar); ingestion quarantines the sample: bad_member_name")


def test_compressed_shard_at_landing(tmp_path, record):
    """landing: gzip'd .tar complete vs cut"""
    folder = tmp_path / "land"
    folder.mkdir()
    write_tar(folder / "000.tar", pair("a", 1), compress="gz")
    cut = write_tar(folder / "001.tar", pair("b", 2), compress="gz")
    cut.write_bytes(cut.read_bytes()[:-20])
    step = advance(LandingCursor(), observe(folder), (), folder)
    step = advance(step.cursor, observe(folder), (), folder)
    assert [o.name for o in step.ready] == ["000.tar"]
    assert step.waiting["001.tar"].startswith("gz-compressed")
    summary = build_manifest([folder / "000.tar"], tmp_path / "m")
    assert (summary.total, summary.ok) == (1, 1)
    record("complete: ready and manifested (1 of 1 kept); cut: waits (gz-compressed stream cut)")


@pytest.mark.parametrize("poison", ["non_utf8_names", "random_bytes", "unexpected_exception"])
def test_bad_shard_does_not_stop_the_others(tmp_path, record, monkeypatch, poison):
    """poisoned middle shard of three"""
    a = write_tar(tmp_path / "a.tar", pair("a0", 1) + pair("a1", 2))
    c = write_tar(tmp_path / "c.tar", pair("c0", 3) + pair("c1", 4))
    b = tmp_path / "b.tar"
    if poison == "random_bytes":
        b.write_bytes(bytes(range(256)) * 40)
    else:
        write_tar(b, [(f"{BAD_NAME}{i}.png", png(10 + i)) for i in range(3)] + pair("b3", 5))
    if poison == "unexpected_exception":
        describe = manifest_mod._describe

        def exploding(sample, shard, *args):
            if shard == "b.tar":
                raise RuntimeError("boom")
            return describe(sample, shard, *args)

        monkeypatch.setattr(manifest_mod, "_describe", exploding)
    summary = build_manifest([a, b, c], tmp_path / "m")
    per_shard = {s.shard: (s.rows, s.ok, s.quarantined) for s in summary.per_shard}
    assert per_shard["a.tar"] == (2, 2, 0) and per_shard["c.tar"] == (2, 2, 0)
    assert summary.total == summary.ok + summary.quarantined
    table = pq.read_table(summary.version_dir / "b.parquet")
    if poison == "non_utf8_names":
        assert accounted(table, 4) == {OK: 1, QUARANTINED: 3} and per_shard["b.tar"] == (4, 1, 3)
        outcome = "b: 3 bad_member_name + 1 ok; a and c: 4 of 4 kept"
    else:
        assert accounted(table, 1) == {QUARANTINED: 1} and table["reason"][0].as_py() == "unreadable_shard"
        detail = table["detail"][0].as_py()
        assert "b.tar" in detail and ("RuntimeError: boom" in detail if poison == "unexpected_exception"
                                      else "not a readable tar shard" in detail)
        outcome = f"b: one unreadable_shard row ({detail.split(': ', 1)[1][:40]}…); a and c: 4 of 4 kept"
    if poison == "unexpected_exception":  # the failure is not cached: the next build reads b again
        monkeypatch.setattr(manifest_mod, "_describe", describe)
        again = build_manifest([a, b, c], tmp_path / "m")
        assert again.read_shards == ["b.tar"] and (again.total, again.ok) == (8, 5)
        outcome += "; next build re-reads b"
    record(outcome)


# ----------------------------------------------------------------------------- readers


def _lazy_pair(i: int, data: bytes) -> Pair:
    return Pair(i, f"{i:032x}", Image.open(io.BytesIO(data)), "x")


def test_reader_refuses_an_image_over_the_cap(record):
    """reader: image over the pixel cap in a pool manifested without one"""
    with pytest.warns(Image.DecompressionBombWarning):
        pair_ = _lazy_pair(7, png_header(12000, 12000))
    preprocess = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
    with pytest.raises(ValueError, match=r"sample 0{31}7 \(index 7\): image 12000x12000 = 144000000 pixels exceeds max_pixels"):
        collate([pair_], preprocess, lambda texts: torch.zeros(len(texts), 4))
    record("ValueError naming the sample: too_large (before decoding)")


def test_reader_decodes_reduced_one_by_one(record):
    """reader: large JPEG and PNG in one batch"""
    jpg, png_ = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(jpg, "JPEG")
    Image.new("RGB", (1200, 900), (200, 10, 30)).save(png_, "PNG")
    pairs = [_lazy_pair(0, jpg.getvalue()), _lazy_pair(1, png_.getvalue())]
    seen = []
    resize = transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor()])

    def preprocess(image):
        seen.append(image.size)
        return resize(image)

    preprocess.transforms = resize.transforms  # the input side (224) is read from the transforms
    images, _ = collate(pairs, preprocess, lambda texts: torch.zeros(len(texts), 4))
    assert images.shape == (2, 3, 224, 224)
    assert seen == [(750, 500), (600, 450)]  # JPEG drafted at 1/4, PNG reduced by 2: shorter side >= 448
    assert all(p.image.tile for p in pairs)  # the pairs' own images were never decoded
    record("decoded reduced (3000x2000 JPEG -> 750x500, 1200x900 PNG -> 600x450), one at a time; pairs hold no pixels")
