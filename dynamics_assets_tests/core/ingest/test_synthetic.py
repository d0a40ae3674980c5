"""Tests of the synthetic long-tailed pool generator (small pools: 600 pairs in 2 shards)."""
from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dynamics_assets.core.ingest.synthetic import DIRT_TYPES, MIN_PAIRS_PER_CONCEPT, DirtRates, _main, concepts, generate, zipf_counts
from dynamics_assets.core.ingest.synthetic import WebProfile, _burst_sizes, burst_fractions

PAIRS, PER_SHARD, EVAL_PER_CONCEPT = 600, 300, 2
RATES = DirtRates(exact_duplicate=0.03, near_duplicate=0.03, mismatched_caption=0.04, empty_caption=0.03,
                  corrupt_image=0.03, missing_caption=0.02, missing_json=0.1)
PARAMS = dict(pairs=PAIRS, seed=7, samples_per_shard=PER_SHARD, eval_per_concept=EVAL_PER_CONCEPT, dirt=RATES)


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """``{key: {ext: bytes}}`` of one shard."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            key, ext = info.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return samples


def parse_caption(text: str) -> tuple[set[str], set[str]]:
    """Colours and shapes a caption names (longest synonym first, so "hollow square" ≠ "square")."""
    text = " ".join(text.lower().split())

    def find(words: dict[str, str]) -> set[str]:
        nonlocal text
        found = set()
        for word in sorted(words, key=len, reverse=True):
            pattern = rf"\b{re.escape(word)}\b"
            if re.search(pattern, text):
                found.add(words[word])
                text = re.sub(pattern, " ", text)
        return found

    colors = {w: c.color for c in concepts() for w in (c.color, *c.color_synonyms)}
    shapes = {w: c.shape for c in concepts() for w in (c.shape, *c.shape_synonyms)}
    return find(colors), find(shapes)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("pool"), **PARAMS)


@pytest.fixture(scope="module")
def pool(dataset) -> dict[str, dict[str, bytes]]:
    merged: dict[str, dict[str, bytes]] = {}
    for shard in dataset.shards:
        merged.update(read_tar(shard))
    return merged


@pytest.fixture(scope="module")
def truth(dataset) -> dict[str, dict]:
    return {row["key"]: row for row in pq.read_table(dataset.ground_truth_path).to_pylist()}


def test_concepts_are_named_and_indexed():
    cs = concepts()
    assert len(cs) >= 120
    assert [c.concept_id for c in cs] == list(range(len(cs)))
    assert len({c.name for c in cs}) == len({c.slug for c in cs}) == len(cs)
    assert all(c.prompt_names[0] == c.name and len(c.color_synonyms) >= 2 for c in cs)


def test_zipf_counts_are_floored_power_law():
    counts = zipf_counts(20_000, 120, 1.3)
    assert counts.sum() == 20_000 and counts.min() >= MIN_PAIRS_PER_CONCEPT
    assert np.all(np.diff(counts) <= 0) and counts[0] > 1000 and counts[-1] < 20
    free = counts > MIN_PAIRS_PER_CONCEPT
    ranks = np.arange(1, 121)[free]
    ideal = counts[free].sum() * ranks**-1.3 / (ranks**-1.3).sum()
    assert np.abs(counts[free] - ideal).max() < 1.0
    tiny = zipf_counts(400, 120, 1.3)
    assert tiny.sum() == 400 and tiny.min() == MIN_PAIRS_PER_CONCEPT
    with pytest.raises(ValueError, match="every concept"):
        zipf_counts(359, 120, 1.3)


def test_layout_and_deterministic_tar_headers(dataset):
    assert [p.name for p in dataset.shards] == ["shard-00000.tar", "shard-00001.tar"]
    for shard in dataset.shards:
        stats = json.loads(shard.with_name(shard.stem + "_stats.json").read_text())
        with tarfile.open(shard) as tar:
            infos = tar.getmembers()
        names = [i.name for i in infos]
        assert names == sorted(names) and not any(n.endswith("_stats.json") for n in names)
        assert {(i.mtime, i.uid, i.gid, i.uname, i.mode) for i in infos} == {(0, 0, 0, "root", 0o644)}
        keys = {n.split(".")[0] for n in names}
        assert stats["count"] == len(keys) == PER_SHARD
        assert all(re.fullmatch(shard.stem[-5:] + r"\d{4}", k) for k in keys)
    assert (dataset.out_dir / "MANIFEST.json").exists()


def test_same_seed_byte_identical_different_seed_differs(dataset, tmp_path):
    again = generate(tmp_path / "again", **PARAMS)
    for a, b in zip(dataset.shards + dataset.eval_shards, again.shards + again.eval_shards, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert dataset.concepts_path.read_bytes() == again.concepts_path.read_bytes()
    other = generate(tmp_path / "other", **{**PARAMS, "seed": 8})
    assert all(a.read_bytes() != b.read_bytes() for a, b in zip(dataset.shards, other.shards))


def test_concept_counts_follow_declared_zipf(dataset, pool, truth):
    table = pq.read_table(dataset.concepts_path)
    assert table.schema.field("concept_id").type == pa.int32()
    assert table.schema.field("train_frequency").type == pa.int64()
    assert table.schema.field("rank").type == pa.int32()
    assert table.schema.field("prompt_names").type == pa.list_(pa.string())
    rows = table.to_pylist()
    # Count from the shards: the json where present, the oracle file for json-less samples.
    counted = Counter()
    for key, members in pool.items():
        if "json" in members:
            meta = json.loads(members["json"])
            assert meta["concept_id"] == truth[key]["concept_id"] and meta["uid"] == truth[key]["uid"]
        counted[truth[key]["concept_id"]] += 1
    frequency = {r["concept_id"]: r["train_frequency"] for r in rows}
    assert counted == Counter(frequency) and min(frequency.values()) >= MIN_PAIRS_PER_CONCEPT
    by_rank = [r["train_frequency"] for r in sorted(rows, key=lambda r: r["rank"])]
    assert sorted(r["rank"] for r in rows) == list(range(1, len(rows) + 1))
    assert by_rank == zipf_counts(PAIRS, len(rows), 1.3).tolist()


def test_ground_truth_json_matches_dirt_rates(dataset, pool, truth):
    metas = [json.loads(m["json"]) for m in pool.values() if "json" in m]
    dirt = Counter(m["dirt"] for m in metas)
    for kind in DIRT_TYPES:
        assert abs(dirt[kind] - getattr(RATES, kind) * PAIRS) <= 1, kind
        assert dataset.dirt_counts[kind] == dirt[kind]
    n_clean = PAIRS - sum(dirt[k] for k in DIRT_TYPES)
    missing = PAIRS - len(metas)
    assert missing == dataset.missing_json and abs(missing / n_clean - RATES.missing_json) < 0.01
    uids = [row["uid"] for row in truth.values()]
    assert len(set(uids)) == PAIRS and all(re.fullmatch(r"[0-9a-f]{32}", u) for u in uids)
    for m in metas:
        assert set(m) == {"uid", "concept_id", "concept", "dirt", "duplicate_of"}
        assert m["concept"] == concepts()[m["concept_id"]].name
        assert (m["duplicate_of"] is not None) == (m["dirt"] in ("exact_duplicate", "near_duplicate"))


def test_dirt_is_what_the_ground_truth_says(pool, truth):
    key_of_uid = {row["uid"]: key for key, row in truth.items()}
    for key, members in pool.items():
        row = truth[key]
        caption = members.get("txt", b"").decode()
        if row["dirt"] == "corrupt_image":
            with pytest.raises(Exception):
                Image.open(io.BytesIO(members["png"])).load()
            continue
        image = Image.open(io.BytesIO(members["png"]))
        image.load()
        assert image.size == (32, 32) and image.mode == "RGB"
        assert ("txt" in members) == (row["dirt"] != "missing_caption")
        if row["dirt"] in ("exact_duplicate", "near_duplicate"):
            source = truth[key_of_uid[row["duplicate_of"]]]
            assert source["dirt"] is None and source["concept_id"] == row["concept_id"]
            assert source["uid"] != row["uid"]
            same = pool[source["key"]]["png"] == members["png"]
            assert same == (row["dirt"] == "exact_duplicate")
            if row["dirt"] == "exact_duplicate":
                assert pool[source["key"]]["txt"] == members["txt"]
        if row["dirt"] == "empty_caption":
            assert caption.strip() == ""
        elif caption:
            concept = concepts()[row["concept_id"]]
            named = parse_caption(caption)
            assert (named == ({concept.color}, {concept.shape})) == (row["dirt"] != "mismatched_caption"), caption


def test_eval_set_is_balanced_and_described(dataset):
    eval_samples: dict[str, dict[str, bytes]] = {}
    for shard in dataset.eval_shards:
        eval_samples.update(read_tar(shard))
    per_concept = Counter(json.loads(m["json"])["concept_id"] for m in eval_samples.values())
    assert per_concept == Counter({c.concept_id: EVAL_PER_CONCEPT for c in concepts()})
    assert all(set(m) == {"png", "json"} for m in eval_samples.values())
    train_images = {m["png"] for shard in dataset.shards for m in read_tar(shard).values()}
    assert not train_images & {m["png"] for m in eval_samples.values()}
    templates = json.loads((dataset.eval_dir / "templates.json").read_text())
    assert len(templates) >= 2 and all(t.count("{}") == 1 for t in templates)


def test_idempotent_and_regenerates_on_new_parameters(dataset):
    files = [p for p in dataset.out_dir.rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    assert generate(dataset.out_dir, **PARAMS) == dataset
    assert {p: p.stat().st_mtime_ns for p in files} == before
    regenerated = generate(dataset.out_dir, **{**PARAMS, "samples_per_shard": PAIRS})
    assert [p.name for p in regenerated.shards] == ["shard-00000.tar"]
    assert sorted(p.name for p in (dataset.out_dir / "shards").iterdir()) == ["shard-00000.tar",
                                                                             "shard-00000_stats.json"]
    generate(dataset.out_dir, **PARAMS)  # restore for any test that runs after this one


def test_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="every concept"):
        generate(tmp_path, pairs=100)
    with pytest.raises(ValueError, match="samples_per_shard"):
        generate(tmp_path, pairs=400, samples_per_shard=20_000)
    with pytest.raises(ValueError, match="corrupt_image"):
        DirtRates(corrupt_image=1.5)
    assert not (tmp_path / "MANIFEST.json").exists()


def test_cli_writes_a_pool(tmp_path, capsys):
    _main(["--out", str(tmp_path / "cli"), "--pairs", "400", "--seed", "3"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"] == 400 and (tmp_path / "cli" / "shards" / "shard-00000.tar").exists()


# ---------------------------------------------------------------------------------------------
# The "web" profile (near-duplicate bursts) and the training-style eval set
# ---------------------------------------------------------------------------------------------

WEB = WebProfile(burst_share=0.4, burst_exponent=2.0, frequency_exponent=1.0)
DUPLICATES = ("exact_duplicate", "near_duplicate")


@pytest.fixture(scope="module")
def web_dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("web"), **PARAMS, profile="web", web=WEB)


@pytest.fixture(scope="module")
def web_truth(web_dataset) -> list[dict]:
    return pq.read_table(web_dataset.ground_truth_path).to_pylist()


def test_concept_profile_is_byte_identical_to_generator_v1(tmp_path):
    """sha256 of the tars the generator wrote before profiles existed (same parameters)."""
    import hashlib

    ds = generate(tmp_path, pairs=400, seed=3, samples_per_shard=400, eval_per_concept=1)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (*ds.shards, *ds.eval_shards)]
    assert digest == ["6edd44eadfaa17f8285f8d47995f60aa6474be26b92e7bbd5a30a8f6e9478a9d",
                      "ddca8920a45b5b81fca6c9eb48f234796c67410353c8c16a85f2d659947626cc"]
    assert json.loads((tmp_path / "MANIFEST.json").read_text())["profile"] == "concept"


def test_web_profile_keeps_labels_and_dirt(truth, web_truth):
    keep = ("key", "uid", "concept_id", "dirt", "duplicate_of", "has_txt", "has_json")
    assert [{k: r[k] for k in keep} for r in web_truth] == [{k: truth[r["key"]][k] for k in keep} for r in web_truth]
    assert all(r["burst"] is None for r in truth.values())


def test_web_bursts_follow_the_parameters(web_dataset, web_truth):
    own = [r for r in web_truth if r["dirt"] not in DUPLICATES]  # planted duplicates inherit their source's
    members = Counter(r["burst"] for r in own if r["burst"] is not None)
    # quotas round per concept and a quota below 2 forms no burst: on this tiny pool (most concepts
    # have 3–5 pairs) the realised share falls a little short of burst_share, never above it
    assert WEB.burst_share - 0.08 < sum(members.values()) / PAIRS <= WEB.burst_share + 0.005
    assert min(members.values()) >= 2
    by_burst: dict[int, set[int]] = {}
    for r in web_truth:
        if r["burst"] is not None:
            by_burst.setdefault(r["burst"], set()).add(r["concept_id"])
    assert all(len(c) == 1 for c in by_burst.values())  # a burst is one concept
    counts = Counter(r["concept_id"] for r in web_truth)
    head, _ = counts.most_common(1)[0]
    bursty = lambda c: np.mean([r["burst"] is not None for r in own if r["concept_id"] == c])  # noqa: E731
    assert bursty(head) > WEB.burst_share + 0.1  # frequent concepts are burstier ...
    rare = [c for c, n in counts.items() if n <= MIN_PAIRS_PER_CONCEPT + 1]
    assert rare and np.mean([bursty(c) for c in rare]) < 0.2  # ... rare ones barely
    manifest = json.loads((web_dataset.out_dir / "MANIFEST.json").read_text())
    assert manifest["profile"] == "web" and manifest["params"]["profile"] == {"name": "web", **WEB.__dict__}
    assert manifest["bursts"] == len(by_burst) == web_dataset.bursts


def test_web_burst_members_are_near_duplicates(web_dataset, web_truth):
    images = {}
    for shard in web_dataset.shards:
        for key, members in read_tar(shard).items():
            images[key] = members
    ok = [r for r in web_truth if r["dirt"] in (None, "mismatched_caption", "empty_caption", "missing_caption")]
    pixels = {r["key"]: np.asarray(Image.open(io.BytesIO(images[r["key"]]["png"])), dtype=np.float32) for r in ok}
    by_burst: dict[int, list[str]] = {}
    for r in ok:
        if r["burst"] is not None:
            by_burst.setdefault(r["burst"], []).append(r["key"])
    within = [np.abs(pixels[a] - pixels[b]).mean() for keys in by_burst.values() for a, b in zip(keys, keys[1:])]
    singles: dict[int, list[str]] = {}
    for r in ok:
        if r["burst"] is None:
            singles.setdefault(r["concept_id"], []).append(r["key"])
    across = [np.abs(pixels[a] - pixels[b]).mean() for keys in singles.values() for a, b in zip(keys, keys[1:])]
    assert len(within) > 20 and len(across) > 20
    assert np.median(within) < 0.5 * np.median(across)
    captions = Counter(images[k]["txt"] for keys in by_burst.values() for k in keys if "txt" in images[k])
    assert max(captions.values()) >= 3  # re-posted captions


def test_web_profile_is_deterministic(web_dataset, tmp_path):
    again = generate(tmp_path / "again", **PARAMS, profile="web", web=WEB)
    for a, b in zip(web_dataset.shards, again.shards, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert web_dataset.ground_truth_path.read_bytes() == again.ground_truth_path.read_bytes()
    other = generate(tmp_path / "other", **PARAMS, profile="web", web=WebProfile(burst_exponent=3.0))
    assert other.shards[0].read_bytes() != web_dataset.shards[0].read_bytes()


def test_train_style_eval_set_is_balanced_fresh_and_in_training_style(dataset, web_dataset):
    samples: dict[str, dict[str, bytes]] = {}
    for shard in dataset.eval_train_style_shards:
        samples.update(read_tar(shard))
    per_concept = Counter(json.loads(m["json"])["concept_id"] for m in samples.values())
    assert per_concept == Counter({c.concept_id: EVAL_PER_CONCEPT for c in concepts()})
    held_out = {m["png"] for shard in dataset.eval_shards for m in read_tar(shard).values()}
    train_images = {m["png"] for shard in dataset.shards for m in read_tar(shard).values()}
    assert not {m["png"] for m in samples.values()} & (held_out | train_images)
    # training style: a flat background (the held-out style has gradients): corners agree more
    def corner_gap(png: bytes) -> float:
        a = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32)
        return float(np.abs(a[:3, :3].mean((0, 1)) - a[-3:, -3:].mean((0, 1))).mean())
    assert np.median([corner_gap(m["png"]) for m in samples.values()]) < np.median([corner_gap(p) for p in held_out])
    assert [p.read_bytes() for p in web_dataset.eval_train_style_shards] == \
        [p.read_bytes() for p in dataset.eval_train_style_shards]  # the same in both profiles


def test_burst_sizes_and_fractions():
    rng = np.random.default_rng(0)
    sizes = _burst_sizes(20_000, WebProfile(burst_exponent=2.0, max_burst=1_000), rng)
    assert sum(sizes) == 20_000 and min(sizes) >= 2
    support = np.arange(2, 1_001) ** -2.0
    assert np.mean(np.array(sizes) == 2) == pytest.approx(support[0] / support.sum(), abs=0.05)
    steep = _burst_sizes(20_000, WebProfile(burst_exponent=3.0), np.random.default_rng(0))
    assert np.mean(steep) < np.mean(sizes)
    counts = zipf_counts(6_000, 120, 1.3)
    for gamma in (0.0, 0.5, 1.0):
        q = burst_fractions(counts, WebProfile(burst_share=0.3, frequency_exponent=gamma))
        assert (q * counts).sum() == pytest.approx(0.3 * 6_000, rel=1e-6) and q.max() <= 0.95 + 1e-12
        assert np.all(np.diff(q) <= 1e-12)  # non-increasing in rank
    assert np.allclose(burst_fractions(counts, WebProfile(burst_share=0.3, frequency_exponent=0.0)), 0.3)


def test_web_profile_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="burst_share"):
        WebProfile(burst_share=0.99)
    with pytest.raises(ValueError, match="burst_exponent"):
        WebProfile(burst_exponent=1.0)
    with pytest.raises(ValueError, match="profile"):
        generate(tmp_path, pairs=400, profile="webby")


def test_cli_web_profile(tmp_path, capsys):
    _main(["--out", str(tmp_path / "cli"), "--pairs", "400", "--seed", "3", "--profile", "web",
           "--burst-exponent", "2.5"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["profile"] == "web" and summary["bursts"] > 0 and summary["eval_train_style_shards"] == 1
    manifest = json.loads((tmp_path / "cli" / "MANIFEST.json").read_text())
    assert manifest["params"]["profile"]["burst_exponent"] == 2.5
