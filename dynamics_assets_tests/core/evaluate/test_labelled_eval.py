"""A user's labelled eval set (ImageFolder, clip_benchmark layout), class frequency in the pool's
captions (DuckDB), the pool's held-out slice for retrieval, retrieval-only evaluation, and the
Fashion-MNIST ImageFolder script on Debian's real files."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dynamics_assets.core.evaluate.eval_set import HEADER_BYTES, EvalSetError, validate_eval_set
from dynamics_assets.core.evaluate.frequency import caption_frequency, concept_pattern, name_pattern
from dynamics_assets.core.evaluate.holdout import (
    HOLDOUT_PER_MILLE, held_out_rows, held_out_sql, holdout_key, is_held_out, load_held_out,
)
from dynamics_assets.core.evaluate.labelled import (
    DEFAULT_TEMPLATES, FileImages, TarImages, load_clip_benchmark, load_image_folder, load_labelled_set,
    with_train_frequency,
)
from dynamics_assets.core.evaluate.report import evaluate_model
from dynamics_assets.core.evaluate.validate import eval_report_findings
from dynamics_assets.core.ingest.manifest import build_manifest, manifest_files
from dynamics_assets.core.io.versions import resolve

REPO = Path(__file__).resolve().parents[3]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

CLASSES = ["red square", "blue circle", "green ring", "yellow star", "black cross"]
COLOURS = [(220, 30, 30), (30, 70, 220), (40, 170, 50), (240, 220, 30), (20, 20, 20)]


def _png(rgb, seed: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.full((32, 32, 3), 128, np.uint8)
    x, y = rng.integers(0, 16, 2)
    pixels[y:y + 16, x:x + 16] = rgb
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes]], gz: bool = False) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0) if gz else buffer.getvalue())


def write_image_folder(root: Path, per_class: int = 3) -> Path:
    for c, (name, rgb) in enumerate(zip(CLASSES, COLOURS)):
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True)
        for i in range(per_class):
            (folder / f"{i:03d}.png").write_bytes(_png(rgb, 100 * c + i))
    return root


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------


def test_image_folder_classes_names_synonyms_templates(tmp_path):
    root = write_image_folder(tmp_path / "set", per_class=2)
    (root / "red_square" / "nested").mkdir()
    (root / "red_square" / "nested" / "z.JPG").write_bytes(_png(COLOURS[0], 7, "JPEG"))
    (root / "red_square" / ".hidden.png").write_bytes(b"not an image")
    (root / "red_square" / "notes.txt").write_text("ignored")
    (root / ".cache").mkdir()
    (root / "synonyms.txt").write_text("# comment\nred square: crimson box, Red Square\nblue_circle: blue disc\n")
    es = load_image_folder(root)
    assert isinstance(es.encoded_images, FileImages)  # bytes are read per image, not held
    # classes in sorted folder order; "_" -> space
    assert es.concepts.column("concept").to_pylist() == sorted(CLASSES)
    assert es.concept_ids.tolist() == [0, 1, 2, 3, 4] and es.train_frequency.tolist() == [0] * 5
    names = dict(zip(es.concepts.column("concept").to_pylist(), es.prompt_names))
    assert names["red square"] == ["red square", "crimson box"]  # a case-duplicate synonym dropped
    assert names["blue circle"] == ["blue circle", "blue disc"]  # keyed by folder name
    assert len(es) == 11 and es.templates == DEFAULT_TEMPLATES and es.captions is None
    red = sorted(CLASSES).index("red square")
    assert [k for k, lab in zip(es.keys, es.labels) if lab == red] == [
        "red_square/000.png", "red_square/001.png", "red_square/nested/z.JPG"]
    assert es.image(len(es) - 1).size == (32, 32) and es.image(0).mode == "RGB"

    (root / "classnames.txt").write_text("\n".join(["k0", "k1", "k2", "k3", "k4"]) + "\n")
    (root / "synonyms.txt").unlink()
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n{c} in {braces}\n")
    es = load_image_folder(root)
    assert es.concepts.column("concept").to_pylist() == ["k0", "k1", "k2", "k3", "k4"]
    assert es.templates == ("a photo of a {}.", "{} in {{braces}}")
    assert es.templates[1].format("cat") == "cat in {braces}"

    (root / "classnames.txt").write_text("only\ntwo\n")
    with pytest.raises(ValueError, match="2 names for 5 class folders"):
        load_image_folder(root)
    (root / "classnames.txt").unlink()
    (root / "synonyms.json").write_text(json.dumps({"purple thing": ["x"]}))
    with pytest.raises(ValueError, match="synonyms for unknown class"):
        load_image_folder(root)


def write_clip_benchmark(root: Path, per_class: int = 2, gz_second: bool = False) -> Path:
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of a {c}.\n")
    samples = [(c, i) for i in range(per_class) for c in range(len(CLASSES))]
    half = len(samples) // 2
    exts = ("webp", "jpg", "png")
    for shard, chunk in enumerate((samples[:half], samples[half:])):
        members = []
        for position, (c, i) in enumerate(chunk):
            key = f"s{shard:03d}{position:04d}"
            ext = exts[(c + i) % 3]
            members.append((f"{key}.{ext}", _png(COLOURS[c], 10 * c + i, {"jpg": "JPEG"}.get(ext, ext.upper()))))
            members.append((f"{key}.cls", f"{c}\n".encode()))
        _write_tar(root / "test" / f"{shard}.tar", members, gz=gz_second and shard == 1)
    return root


@pytest.mark.parametrize("gz_second", [False, True])
def test_clip_benchmark_layout(tmp_path, gz_second):
    root = write_clip_benchmark(tmp_path / "wds_shapes", per_class=2, gz_second=gz_second)
    es = load_labelled_set(root)
    assert isinstance(es.encoded_images, TarImages)
    assert len(es) == 10 and es.labels.tolist() == [0, 1, 2, 3, 4] * 2
    assert es.keys[0] == "test/0.tar/s0000000" and es.keys[5] == "test/1.tar/s0010000"
    assert es.concepts.column("concept").to_pylist() == CLASSES
    assert es.templates == ("a photo of a {}.", "a drawing of a {}.")
    # uncompressed shards are read back by seeking; a gzip shard keeps its encoded images
    assert set(es.encoded_images.inline) == (set(range(5, 10)) if gz_second else set())
    for i in range(len(es)):
        pixels = np.asarray(es.image(i))
        assert pixels.shape == (32, 32, 3)
        # the class colour patch is there (JPEG / WebP are lossy: a tolerance)
        assert np.abs(pixels.reshape(-1, 3).astype(int) - COLOURS[es.labels[i]]).sum(1).min() < 60


def test_clip_benchmark_errors_name_the_sample(tmp_path):
    root = tmp_path / "bad"
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("a\nb\n")
    _write_tar(root / "test" / "0.tar", [("k1.png", _png((1, 2, 3), 0)), ("k1.cls", b"7")])
    with pytest.raises(ValueError, match=r"0\.tar: sample k1: label 7 outside \[0, 2\)"):
        load_clip_benchmark(root)
    _write_tar(root / "test" / "0.tar", [("k1.png", _png((1, 2, 3), 0))])
    with pytest.raises(ValueError, match=r"sample k1: needs one image and a \.cls label"):
        load_clip_benchmark(root)
    (root / "zeroshot_classification_templates.txt").write_text("no placeholder\n")
    _write_tar(root / "test" / "0.tar", [("k1.png", _png((1, 2, 3), 0)), ("k1.cls", b"1")])
    with pytest.raises(ValueError, match=r"needs '\{c\}'"):
        load_clip_benchmark(root)
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        load_clip_benchmark(root, split="train")


def test_loaders_refuse_an_empty_class_and_a_single_class(tmp_path):
    """Either loader refuses what would leave a class's accuracy undefined (a NaN tail)."""
    root = write_image_folder(tmp_path / "set", per_class=1)
    (root / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"1 class\(es\) without an image, e\.g\. class folder .*zebra"):
        load_image_folder(root)
    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    (one / "cat" / "0.png").write_bytes(_png((1, 2, 3), 0))
    with pytest.raises(ValueError, match=r"1 class\(es\); a labelled eval set needs at least two"):
        load_labelled_set(one)
    bench = write_clip_benchmark(tmp_path / "bench", per_class=1)
    (bench / "classnames.txt").write_text("\n".join(CLASSES + ["unicorn"]) + "\n")
    with pytest.raises(ValueError, match=r"without an image, e\.g\. 'unicorn' \(classnames\.txt line 6\)"):
        load_clip_benchmark(bench)


# ---------------------------------------------------------------------------------------------
# validate_eval_set: checked before any work
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["ImageFolder", "clip_benchmark", "clip_benchmark gzip"])
def test_validate_eval_set_accepts_what_the_loader_reads(tmp_path, layout):
    if layout == "ImageFolder":
        root = write_image_folder(tmp_path / "set", per_class=2)
        (root / "red_square" / "notes.txt").write_text("not read")
    else:
        root = write_clip_benchmark(tmp_path / "set", per_class=2, gz_second=layout.endswith("gzip"))
    info = validate_eval_set(root)
    es = load_labelled_set(root)
    assert info.layout == layout.split()[0] and info.root == root
    assert list(info.classes) == es.concepts.column("concept").to_pylist()
    assert info.images == len(es) == 10 and info.per_class == (2,) * 5
    assert info.ignored == (("red_square/notes.txt",) if layout == "ImageFolder" else ())
    assert f"{layout.split()[0]}: 10 images, 5 classes, 2 … 2 per class" in info.describe()


def _jpeg_with_a_long_header(rgb) -> bytes:
    """A JPEG whose header (a 60 kB comment and a 30 kB EXIF block before its frame) is longer than HEADER_BYTES."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buffer, format="JPEG", comment=b"x" * 60_000, exif=b"Exif\x00\x00" + b"y" * 30_000)
    return buffer.getvalue()


def test_validate_eval_set_reads_a_header_longer_than_its_prefix(tmp_path):
    root = write_clip_benchmark(tmp_path / "set", per_class=1)
    data = _jpeg_with_a_long_header((9, 9, 9))
    assert len(data) > HEADER_BYTES
    _write_tar(root / "test" / "2.tar", [("big.jpg", data), ("big.cls", b"0")])
    assert validate_eval_set(root).per_class == (2, 1, 1, 1, 1)


def _image_folder_faults(root: Path, fault: str) -> Path:
    write_image_folder(root, per_class=2)
    if fault == "missing":
        return root / "nowhere"
    if fault == "a file":
        return root / "red_square" / "000.png"
    if fault == "empty class":
        (root / "zebra").mkdir()
    elif fault == "one class":
        for folder in root.iterdir():
            if folder.name != "red_square":
                for f in folder.iterdir():
                    f.unlink()
                folder.rmdir()
    elif fault == "not an image":
        (root / "blue_circle" / "001.png").write_text("<html>404 not found</html>")
    elif fault == "empty image":
        (root / "blue_circle" / "001.png").write_bytes(b"")
    elif fault == "classnames count":
        (root / "classnames.txt").write_text("a\nb\n")
    elif fault == "bad template":
        (root / "zeroshot_classification_templates.txt").write_text("no placeholder\n")
    elif fault == "no class folder":
        for folder in list(root.iterdir()):
            for f in folder.iterdir():
                f.rename(root / f"{folder.name}-{f.name}")
            folder.rmdir()
    return root


IMAGE_FOLDER_FAULTS = {
    "missing": r"eval set .*nowhere does not exist",
    "a file": r"eval set .*000\.png is a file, not a folder",
    "empty class": r"1 empty class\(es\).*\n  class folder .*zebra holds no image",
    "one class": r"one class folder \('red_square'\); .* at least two classes",
    "not an image": r"1 image\(s\) whose header does not decode:\n  .*blue_circle/001\.png: not an image PIL can read",
    "empty image": r"blue_circle/001\.png: not an image PIL can read",
    "classnames count": r"classnames\.txt: 2 names for 5 class folders",
    "bad template": r"every template needs '\{c\}'",
    "no class folder": r"no class sub-folders .*neither an ImageFolder .* nor a clip_benchmark",
}


@pytest.mark.parametrize("fault", list(IMAGE_FOLDER_FAULTS))
def test_validate_eval_set_image_folder_faults(tmp_path, fault):
    with pytest.raises(EvalSetError, match=IMAGE_FOLDER_FAULTS[fault]):
        validate_eval_set(_image_folder_faults(tmp_path / "set", fault))


def _clip_benchmark_faults(root: Path, fault: str) -> Path:
    write_clip_benchmark(root, per_class=2)
    shard = root / "test" / "1.tar"
    if fault == "no classnames.txt":
        (root / "classnames.txt").unlink()
    elif fault == "no shard":
        for s in (root / "test").iterdir():
            s.unlink()
    elif fault == "one class":
        (root / "classnames.txt").write_text("only\n")
    elif fault == "empty class":
        (root / "classnames.txt").write_text("\n".join(CLASSES + ["unicorn"]) + "\n")
    elif fault == "not an image":
        _write_tar(shard, [("k1.jpg", b"GIF89a? no, a caption"), ("k1.cls", b"1")])
    elif fault == "no label":
        _write_tar(shard, [("k1.png", _png((1, 2, 3), 0))])
    elif fault == "label out of range":
        _write_tar(shard, [("k1.png", _png((1, 2, 3), 0)), ("k1.cls", b"9")])
    elif fault == "label not an integer":
        _write_tar(shard, [("k1.png", _png((1, 2, 3), 0)), ("k1.cls", b"cat")])
    elif fault == "cut shard":
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
    elif fault == "not a tar":
        shard.write_text("hello")
    return root


CLIP_BENCHMARK_FAULTS = {
    "no classnames.txt": r"classnames\.txt is missing — a clip_benchmark webdataset folder \(2 shard\(s\) in .*test\)",
    "no shard": r"test holds no \.tar shard \(clip_benchmark webdataset layout",
    "one class": r"classnames\.txt: 1 class name\(s\); at least two classes",
    "empty class": r"class 5 'unicorn' \(classnames\.txt line 6\) has no sample",
    "not an image": r"1\.tar: sample k1\.jpg: not an image PIL can read",
    "no label": r"1\.tar: sample k1: needs one image \(jpg/jpeg/png/webp\) and a \.cls label, has \['png'\]",
    "label out of range": r"1\.tar: sample k1: label 9 outside \[0, 5\)",
    "label not an integer": r"1\.tar: sample k1: \.cls is not an integer \('cat'\)",
    "cut shard": r"1\.tar: not a complete tar \(cut short or corrupt in sample",
    "not a tar": r"1\.tar: not a readable tar",
}


@pytest.mark.parametrize("fault", list(CLIP_BENCHMARK_FAULTS))
def test_validate_eval_set_clip_benchmark_faults(tmp_path, fault):
    with pytest.raises(EvalSetError, match=CLIP_BENCHMARK_FAULTS[fault]):
        validate_eval_set(_clip_benchmark_faults(tmp_path / "set", fault))


def test_validate_eval_set_lists_every_bad_image(tmp_path):
    root = write_image_folder(tmp_path / "set", per_class=3)
    for folder in sorted(root.iterdir()):
        (folder / "001.png").write_bytes(b"\x00" * 10)
    with pytest.raises(EvalSetError) as raised:
        validate_eval_set(root)
    lines = str(raised.value).splitlines()
    assert lines[0] == f"eval set {root}: 5 image(s) whose header does not decode:"
    assert [line.split(": ")[0].strip() for line in lines[1:]] == [str(f / "001.png") for f in sorted(root.iterdir())]


# ---------------------------------------------------------------------------------------------
# Class frequency in captions (DuckDB)
# ---------------------------------------------------------------------------------------------


def _manifest_part(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    ids, captions, status = zip(*rows)
    pq.write_table(pa.table({"sample_id": list(ids), "caption": list(captions), "status": list(status)}), path)
    return path


def _id(i: int) -> str:
    return hashlib.md5(str(i).encode()).hexdigest()  # 32 hex characters, like the manifest's ids


def _not_held_out_ids(n: int) -> list[str]:
    ids = [_id(i) for i in range(n + 50)]
    return [i for i, h in zip(ids, is_held_out(ids)) if not h][:n]


def test_frequency_word_boundaries_synonyms_plurals_case(tmp_path):
    captions = [
        "a cat on a mat",            # cat
        "Category of products",      # not cat
        "two CATS and a kitty",      # cat (once, though twice)
        "bobcat in the wild",        # not cat
        "cat-food bag",              # cat, bag
        "three dresses for sale",    # dress (plural es)
        "address book",              # not dress
        "butterflies in a field",    # butterfly (y -> ies)
        "Ankle-Boot, black",         # ankle boot, boot
        "rubber boots",              # boot
        "a T shirt",                 # t-shirt
        "tshirt",                    # not t-shirt (no separator)
        "c++ for beginners",         # c++ (escaped)
        "a.b testing",               # a.b literal
        "axb testing",               # not a.b
    ]
    ids = _not_held_out_ids(len(captions) + 1)
    rows = [(i, c, "ok") for i, c in zip(ids, captions)]
    part1 = _manifest_part(tmp_path / "p1.parquet", rows[:7])
    part2 = _manifest_part(tmp_path / "p2.parquet", rows[7:] + [(ids[-1], "a cat, quarantined", "quarantined")])
    names = [["cat", "kitty"], ["dress"], ["butterfly"], ["ankle boot"], ["boot"], ["t-shirt"], ["bag"],
             ["c++"], ["a.b"], ["elephant"]]
    freq = caption_frequency([part1, part2], names, chunk=3)
    assert freq.tolist() == [3, 1, 1, 1, 2, 1, 1, 1, 1, 0]
    assert freq.dtype == np.int64

    with duckdb.connect() as con:  # the patterns themselves, on single strings
        def hit(pattern: str, text: str) -> bool:
            return con.execute("SELECT regexp_matches(?, ?)", [text, pattern]).fetchone()[0]
        assert hit(concept_pattern(["cat"]), "CAT!") and not hit(concept_pattern(["cat"]), "concatenate")
        assert hit(concept_pattern(["box"]), "boxes") and hit(concept_pattern(["day"]), "days")
        assert not hit(concept_pattern(["day"]), "daies")  # vowel + y: plural s only
    assert name_pattern("(tv)").startswith(r"\(")  # no \b before a non-word character
    with pytest.raises(ValueError, match="no usable name"):
        concept_pattern([" "])


def test_frequency_skips_held_out_pairs_and_reads_a_manifest_dir(tmp_path):
    ids = [_id(i) for i in range(4000)]
    mask = is_held_out(ids)
    held, kept = [i for i, m in zip(ids, mask) if m][:3], [i for i, m in zip(ids, mask) if not m][:2]
    part = _manifest_part(tmp_path / "p.parquet", [(i, "a cat", "ok") for i in held + kept])
    assert caption_frequency([part], [["cat"]]).tolist() == [2]
    assert caption_frequency([part], [["cat"]], exclude_held_out=False).tolist() == [5]


# ---------------------------------------------------------------------------------------------
# Held-out slice
# ---------------------------------------------------------------------------------------------


def test_held_out_slice_is_a_pure_function_of_the_id():
    # pinned definition: first 8 bytes of sha256(id), big-endian, mod 1000 < 5
    assert holdout_key(["abc"]).tolist() == [int(hashlib.sha256(b"abc").hexdigest()[:16], 16)]
    assert holdout_key(["abc"])[0] % 1000 == 74 and not is_held_out(["abc"])[0]
    ids = [_id(i) for i in range(200_000)]
    mask = is_held_out(ids)
    assert 0.004 < mask.mean() < 0.006  # 0.5 %
    assert np.array_equal(mask, is_held_out(list(reversed(ids)))[::-1])  # order does not matter
    assert np.array_equal(mask[::7], is_held_out(ids[::7]))  # nor the company an id keeps
    assert np.array_equal(mask, is_held_out([i.encode() for i in ids]))  # 'S32' bytes as pool.ok_sample_ids
    assert np.array_equal(is_held_out(ids, per_mille=50), holdout_key(ids) % 1000 < 50)
    with duckdb.connect() as con:  # the SQL predicate agrees with numpy
        con.register("t", pa.table({"sample_id": ids[:20_000]}))
        sql_mask = con.execute(f"SELECT {held_out_sql()} FROM t").fetchnumpy()
        assert np.array_equal(next(iter(sql_mask.values())), mask[:20_000])
    assert HOLDOUT_PER_MILLE == 5


def write_pool(root: Path, n_per_class=(40, 20, 10, 5, 2), per_shard: int = 30) -> Path:
    """Pool shards with uids, caption "a photo of a <class>" (frequencies ``n_per_class``) and a
    quarantined pair (no caption); returns the committed manifest version."""
    samples = [(c, i) for c, n in enumerate(n_per_class) for i in range(n)]
    order = np.random.default_rng(0).permutation(len(samples))
    samples = [samples[j] for j in order]
    shards = []
    for s in range(0, len(samples), per_shard):
        members = []
        for pos, (c, i) in enumerate(samples[s:s + per_shard]):
            key = f"{s // per_shard:05d}{pos:04d}"
            uid = hashlib.md5(f"{c}/{i}".encode()).hexdigest()
            members += [(f"{key}.png", _png(COLOURS[c], 1000 * c + i)),
                        (f"{key}.txt", f"a photo of a {CLASSES[c]}, number {i}".encode()),
                        (f"{key}.json", json.dumps({"uid": uid}).encode())]
        if s == 0:
            members.append(("zzzz.png", _png((0, 0, 0), 1)))  # missing caption: quarantined
        path = root / "shards" / f"{s // per_shard:05d}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_tar(path, members)
        shards.append(path)
    return build_manifest(shards, root / "manifest").version_dir


def test_held_out_rows_and_pairs_follow_the_definition(tmp_path):
    manifest = write_pool(tmp_path)
    rows = held_out_rows(manifest, per_mille=200, cap=None)
    ok = pa.concat_tables(pq.read_table(p, columns=["sample_id", "status", "shard", "row"])
                          .filter(pa.compute.equal(pa.compute.field("status"), "ok")) for _, p in manifest_files(manifest))
    expected = {i for i, m in zip(ok["sample_id"].to_pylist(), is_held_out(ok["sample_id"].to_pylist(), per_mille=200)) if m}
    assert set(rows["sample_id"].to_pylist()) == expected and len(expected) > 5
    assert rows["sample_index"].to_pylist() == sorted(rows["sample_index"].to_pylist())  # pool order

    capped = held_out_rows(manifest, per_mille=200, cap=4)
    smallest = sorted(zip(rows["key"].to_pylist(), rows["sample_id"].to_pylist()))[:4]
    assert set(capped["sample_id"].to_pylist()) == {i for _, i in smallest}
    assert held_out_rows(manifest, per_mille=200, cap=4).equals(capped)  # deterministic

    held = load_held_out(manifest, tmp_path / "shards", per_mille=200, cap=None)
    pairs = [p for batch in held.iter_batches(4) for p in batch]
    assert [p.sample_id for p in pairs] == held.sample_ids and [p.caption for p in pairs] == held.captions
    assert [p.sample_index for p in pairs] == rows["sample_index"].to_pylist()
    assert all(p.image.size == (32, 32) for p in pairs)


# ---------------------------------------------------------------------------------------------
# End to end with a tiny random model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    import open_clip
    from dynamics_assets.core.model.clip import create_model

    model, _, preprocess = create_model("dynamics-tiny-32")
    return model, preprocess, open_clip.get_tokenizer("dynamics-tiny-32")


def test_zero_shot_with_pool_frequency_and_held_out_retrieval(tmp_path, tiny_model):
    model, preprocess, tokenizer = tiny_model
    manifest = write_pool(tmp_path)
    es = load_labelled_set(write_image_folder(tmp_path / "labelled", per_class=3))
    names = es.concepts.column("concept").to_pylist()
    freq = caption_frequency(manifest, es.prompt_names, exclude_held_out=False)
    by_name = dict(zip(names, freq.tolist()))
    assert by_name == {"red square": 40, "blue circle": 20, "green ring": 10, "yellow star": 5, "black cross": 2}
    es = with_train_frequency(es, caption_frequency(manifest, es.prompt_names))
    held = load_held_out(manifest, tmp_path / "shards", per_mille=200)

    report = evaluate_model(model, preprocess, tokenizer, es, batch_size=4, held_out=held,
                            notes={"labelled_set": str(es.eval_dir)})
    m = report.metrics
    for key in ("zero_shot/top1", "zero_shot/top5", "zero_shot/mean_per_class", "zero_shot/head",
                "zero_shot/middle", "zero_shot/tail", "retrieval/i2t_r1", "retrieval/t2i_r10",
                "class_retrieval/i2t_r1"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["zero_shot/top5"] == 1.0  # 5 classes
    pc = report.per_concept.to_pydict()
    bucket = dict(zip(pc["concept"], pc["bucket"]))
    assert bucket["red square"] == "head" and bucket["black cross"] == "tail"  # from caption frequency
    assert sum(pc["n"]) == 15
    assert "retrieval" in report.notes and str(len(held)) in report.notes["retrieval"]

    paths = report.save(tmp_path / "report")
    assert json.loads(paths["notes.json"].read_text())["labelled_set"] == str(es.eval_dir)
    assert not eval_report_findings(resolve(tmp_path / "report")).errors


def test_retrieval_only_without_a_labelled_set(tmp_path, tiny_model):
    model, preprocess, tokenizer = tiny_model
    manifest = write_pool(tmp_path)
    held = load_held_out(manifest, tmp_path / "shards", per_mille=200)
    report = evaluate_model(model, preprocess, tokenizer, None, batch_size=8, held_out=held)
    assert report.notes["zero_shot"] == "no labelled set" and not report.has_zero_shot
    assert sorted(report.metrics) == sorted(f"retrieval/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10))
    paths = report.save(tmp_path / "report")
    text = paths["report.md"].read_text()
    assert "no labelled set" in text and "Not evaluated" in text
    assert paths["accuracy_vs_frequency.png"].read_bytes()[:4] == b"\x89PNG"
    assert not eval_report_findings(resolve(tmp_path / "report")).errors

    empty = load_held_out(manifest, tmp_path / "shards", per_mille=0)  # nothing held out: still no failure
    report = evaluate_model(model, preprocess, tokenizer, None, held_out=empty)
    assert report.metrics == {} and "empty" in report.notes["retrieval"]
    assert "Not evaluated" in report.to_markdown()
    with pytest.raises(ValueError, match="needs a labelled set"):
        evaluate_model(model, preprocess, tokenizer, None, held_out=held, cluster_of_image=np.zeros(1))


def test_four_held_out_pairs_report_recall_at_1_only(tmp_path, tiny_model):
    """Issue 18: R@5 and R@10 were reported as 1.0 from 4 held-out pairs. With 4 candidates each
    way only R@1 means something: R@5 / R@10 are left out of the metrics (the eval_report check
    still passes), the report shows them as '–' and states n = 4, and a labelled set's class-aware
    retrieval beside them is kept as class_retrieval/*."""
    model, preprocess, tokenizer = tiny_model
    manifest = write_pool(tmp_path)
    held = load_held_out(manifest, tmp_path / "shards", per_mille=200, cap=4)
    assert len(held) == 4
    report = evaluate_model(model, preprocess, tokenizer, None, batch_size=8, held_out=held)
    assert sorted(report.metrics) == ["retrieval/i2t_r1", "retrieval/t2i_r1"]
    assert report.retrieval_candidates == {"retrieval/i2t": 4, "retrieval/t2i": 4}
    assert "R@5, R@10 not reported: only 4 candidates" in report.notes["retrieval_k"]
    paths = report.save(tmp_path / "report")
    text = paths["report.md"].read_text()
    assert "| retrieval/i2t_r5 | – (k ≥ 4 candidates: 1 by construction, not reported) |" in text
    assert "| retrieval/t2i_r10 | – (k ≥ 4 candidates" in text and "retrieval/i2t over 4 texts" in text
    assert "| retrieval/i2t_r5 | 1.000 |" not in text
    assert json.loads(paths["notes.json"].read_text())["retrieval_k"] == report.notes["retrieval_k"]
    assert not eval_report_findings(resolve(tmp_path / "report")).errors

    es = load_labelled_set(write_image_folder(tmp_path / "labelled", per_class=3))  # 15 images, 5 classes
    report = evaluate_model(model, preprocess, tokenizer, es, batch_size=8, held_out=held)
    m = report.metrics
    assert {"retrieval/i2t_r1", "retrieval/t2i_r1", "class_retrieval/t2i_r10"} <= set(m)
    assert not {"retrieval/i2t_r5", "retrieval/t2i_r10"} & set(m)
    assert report.retrieval_candidates["class_retrieval/t2i"] == 15
    assert "retrieval/i2t R@5, R@10 not reported: only 4 candidates" in report.notes["retrieval_k"]


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (Debian's real IDX files)
# ---------------------------------------------------------------------------------------------


def _need_fashion_mnist() -> None:
    if not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"{FASHION_MNIST} is absent: install Debian's Fashion-MNIST with "
                    "`bash scripts/install_fashion_mnist.sh` (apt-get install -y dataset-fashion-mnist)")


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_fashion_mnist_imagefolder_script_on_the_debian_files(tmp_path, tiny_model):
    _need_fashion_mnist()
    out = tmp_path / "fashion"
    script = [sys.executable, str(REPO / "scripts" / "fashion_mnist_imagefolder.py"), str(out)]
    run = subprocess.run([*script, "--limit-per-class", "4", "--size", "32"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "40 images in 10 class folders" in run.stdout
    first = _tree(out)
    again = subprocess.run([*script, "--limit-per-class", "4", "--size", "32"], capture_output=True, text=True)
    assert "(0 file(s) written, 0 removed)" in again.stdout and _tree(out) == first  # idempotent
    fewer = subprocess.run([*script, "--limit-per-class", "2", "--size", "32"], capture_output=True, text=True)
    assert "20 removed" in fewer.stdout and len([k for k in _tree(out) if k.endswith(".png")]) == 20

    es = load_labelled_set(out)
    assert es.concepts.column("concept").to_pylist() == [
        "ankle boot", "bag", "coat", "dress", "pullover", "sandal", "shirt", "sneaker", "t-shirt", "trouser"]
    assert es.prompt_names[8] == ["t-shirt", "tee"] and len(es) == 20
    # the first t10k image is an ankle boot (label 9): it is ankle_boot/00000.png, upscaled to 32 px
    assert es.keys[0] == "ankle_boot/00000.png" and es.image(0).size == (32, 32)
    with gzip.open(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read()[8:], np.uint8)
    assert len(labels) == 10_000 and labels[0] == 9
    assert all(labels[int(Path(k).stem)] == 9 for k in es.keys if k.startswith("ankle_boot/"))

    model, preprocess, tokenizer = tiny_model
    report = evaluate_model(model, preprocess, tokenizer, with_train_frequency(es, np.arange(10)), batch_size=16)
    assert 0.0 <= report.metrics["zero_shot/top1"] <= 1.0 and report.n_images == 20
    assert not math.isnan(report.metrics["zero_shot/tail"])


def test_fashion_mnist_script_says_how_to_install(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "fashion_mnist_imagefolder.py"),
                          str(tmp_path / "out"), "--source", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert run.returncode == 2 and "apt-get install -y dataset-fashion-mnist" in run.stderr
