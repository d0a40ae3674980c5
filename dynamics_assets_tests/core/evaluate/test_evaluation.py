"""Evaluation core: hand-computed zero-shot / retrieval / grouping metrics, eval-set loading,
end-to-end evaluation with a tiny random open_clip model, and FLOP counting."""
from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dynamics_assets.core.io.versions import resolve
from dynamics_assets.core.evaluate.report import accuracy_by_group, bucket_note, class_embeddings, evaluate_model, frequency_buckets, load_eval_set, log2_frequency_bin, retrieval_recall, zero_shot_metrics
from dynamics_assets.core.model.flops import forward_flops, forward_flops_per_pair, train_flops
from dynamics_assets.core.ingest.synthetic import generate

TINY = "evaluation-test-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# ---------------------------------------------------------------------------------------------
# Pure metrics
# ---------------------------------------------------------------------------------------------


def test_zero_shot_hand_computed():
    classes = np.eye(4, dtype=np.float32)  # class 3 has no eval image
    images = np.array([
        [1.0, 0.5, 0.0, 0.0],  # label 0: rank 0
        [0.2, 1.0, 0.5, 0.0],  # label 0: rank 2 (1 and 2 ahead)
        [0.0, 1.0, 0.0, 0.0],  # label 1: rank 0
        [0.9, 0.5, 0.0, 0.0],  # label 1: rank 1
        [0.0, 0.3, 1.0, 0.0],  # label 2: rank 0
        [0.0, 0.1, 0.9, 0.0],  # label 2: rank 0
    ], np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    m = zero_shot_metrics(images, classes, labels, train_frequency=np.array([8, 4, 2, 1]), topk=(1, 2))
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top2"] == pytest.approx(5 / 6)
    np.testing.assert_allclose(m["per_class_accuracy"], [0.5, 0.5, 1.0, np.nan])
    assert m["per_class_count"].tolist() == [2, 2, 2, 0]
    assert m["mean_per_class"] == pytest.approx(2 / 3)
    assert m["correct"].tolist() == [True, False, True, False, True, True]
    # 4 classes: round(0.8) = 1 tail (class 3, absent -> NaN), 1 head (class 0)
    assert m["bucket"].tolist() == ["head", "middle", "middle", "tail"]
    assert m["bucket_accuracy"]["head"] == 0.5 and m["bucket_accuracy"]["middle"] == 0.75
    assert math.isnan(m["bucket_accuracy"]["tail"])
    bins = m["frequency_bins"]  # present classes have frequencies 8, 4, 2 -> bins 3, 2, 1
    assert bins["log2_bin"].tolist() == [1, 2, 3]
    assert bins["min_frequency"].tolist() == [2, 4, 8] and bins["max_frequency"].tolist() == [3, 7, 15]
    assert bins["accuracy"].tolist() == [1.0, 0.5, 0.5] and bins["n_images"].tolist() == [2, 2, 2]


def test_zero_shot_ties_rank_the_lower_class_first():
    images = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    m = zero_shot_metrics(images, np.eye(2, dtype=np.float32), np.array([0, 1]),
                          train_frequency=np.array([1, 1]), topk=(1, 2))
    assert m["correct"].tolist() == [True, False] and m["top2"] == 1.0


def test_zero_shot_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must lie"):
        zero_shot_metrics(np.eye(2), np.eye(2), np.array([0, 2]), train_frequency=np.array([1, 1]))


def test_buckets_by_frequency():
    freq = np.array([50, 3, 7, 100, 3, 20, 9, 1000, 5, 40])
    bucket = frequency_buckets(freq)
    assert set(np.flatnonzero(bucket == "tail")) == {1, 4}
    assert set(np.flatnonzero(bucket == "head")) == {3, 7}
    assert (bucket == "middle").sum() == 6
    assert bucket_note(freq, bucket) is None  # no tie at a threshold: the nominal 2 / 6 / 2


def test_equal_frequencies_share_a_bucket_and_the_note_says_so():
    """Issue 18: with most classes at frequency 0, head / middle / tail were split by concept order
    (two of eight frequency-0 classes were 'tail', the others 'middle'). Ties now stay together:
    each bucket is the tie-closed set of least (most) frequent concepts closest to its nominal
    size and not empty, so the eight are all tail, and the note says the tail grew and the middle
    emptied."""
    freq = np.array([0, 0, 7, 0, 0, 0, 0, 0, 0, 3])
    bucket = frequency_buckets(freq)
    assert set(np.flatnonzero(bucket == "tail")) == set(np.flatnonzero(freq == 0))  # all 8, none split off
    assert set(np.flatnonzero(bucket == "head")) == {2, 9}
    assert not (bucket == "middle").any()
    note = bucket_note(freq, bucket)
    assert "the tail holds 8 of 10 concepts (nominally 2): 8 concepts tie at frequency 0" in note
    assert "the middle is empty (nominally 6)" in note
    # a tie reaching both thresholds goes to the tail; the head keeps only what is strictly above it
    freq = np.array([0] * 9 + [4])
    bucket = frequency_buckets(freq)
    assert bucket.tolist() == ["tail"] * 9 + ["head"] and "the head holds 1 of 10 concepts (nominally 2)" in \
        bucket_note(freq, bucket)
    # a tie at the boundary that would swell the tail to 7 of 10 is left out when that is closer to nominal
    freq = np.array([1, 3, 3, 3, 3, 3, 3, 8, 9, 10])
    bucket = frequency_buckets(freq)
    assert bucket.tolist() == ["tail"] + ["middle"] * 7 + ["head"] * 2
    assert "the tail holds 1 of 10 concepts (nominally 2): 6 concepts tie at frequency 3" in bucket_note(freq, bucket)
    flat = np.full(10, 5)  # one tie: every concept is tail, never 2 of them by id
    assert frequency_buckets(flat).tolist() == ["tail"] * 10
    assert "every concept is tail (nominally 2)" in bucket_note(flat, frequency_buckets(flat))
    # equal frequencies never land in different buckets, whatever the order of the concepts
    rng = np.random.default_rng(0)
    for _ in range(200):
        freq = rng.integers(0, 4, size=int(rng.integers(1, 30)))
        bucket = frequency_buckets(freq)
        assert all(len(set(bucket[freq == f])) == 1 for f in np.unique(freq))
        assert (bucket[np.argsort(freq, kind="stable")] == np.array(sorted(
            bucket, key=["tail", "middle", "head"].index))).all(), "buckets follow frequency order"


def test_bucket_accuracy_ten_concepts():
    freq = np.array([50, 3, 7, 100, 3, 20, 9, 1000, 5, 40])
    predicted = np.array([0, 1, 0, 0, 4, 5, 0, 0, 8, 0])  # right for tail 1, 4 and middle 5, 8
    images = np.eye(10, dtype=np.float32)[predicted]
    m = zero_shot_metrics(images, np.eye(10, dtype=np.float32), np.arange(10), train_frequency=freq)
    assert m["bucket_accuracy"] == {"tail": 1.0, "middle": pytest.approx(3 / 6), "head": 0.0}
    assert m["top1"] == pytest.approx(0.5)  # class 0 also right: 0, 1, 4, 5, 8


def test_log2_frequency_bins():
    assert log2_frequency_bin(np.array([0, 1, 2, 3, 4, 7, 8, 1000, 2**40])).tolist() == [-1, 0, 1, 1, 2, 2, 3, 9, 40]


def test_retrieval_recall_hand_computed():
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[0.9, 0, 0.1], [0.8, 0.1, 0], [0, 0.2, 0.9], [0, 0.9, 0.3]], np.float32)
    r = retrieval_recall(images, texts, np.array([0, 1, 1]), np.array([0, 1, 1, 0]), ks=(1, 2, 3))
    # image ranks of the first relevant text: 0, 1, 0; text ranks of the first relevant image: 0, 1, 0, 2
    # t2i_r3: k = 3 ≥ the 3 candidate images, 1 by construction: not reported
    assert r == pytest.approx({"i2t_r1": 2 / 3, "i2t_r2": 1.0, "i2t_r3": 1.0,
                               "t2i_r1": 0.5, "t2i_r2": 0.75})


def test_recall_at_k_is_not_reported_for_k_at_or_above_the_candidates():
    """Issue 18: R@5 and R@10 were reported as 1.0 from 4 held-out pairs. With n candidates,
    recall@k for k ≥ n is 1 by construction: left out of the metrics, shown as '–' with n."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.arange(4)
    r = retrieval_recall(emb, emb, labels, labels)
    assert sorted(r) == ["i2t_r1", "t2i_r1"] and r["i2t_r1"] == 1.0
    assert set(retrieval_recall(np.tile(emb, (3, 1)), emb, np.tile(labels, 3), labels)) == {"i2t_r1", "t2i_r1",
                                                                                          "t2i_r5", "t2i_r10"}
    from dynamics_assets.core.evaluate.report import EvalReport, trivial_ks

    candidates = {"retrieval/i2t": 4, "retrieval/t2i": 4}
    assert trivial_ks(candidates) == {"retrieval/i2t": [5, 10], "retrieval/t2i": [5, 10]}
    report = EvalReport(metrics={f"retrieval/{k}": v for k, v in r.items()}, per_concept=_empty_concepts(),
                        per_frequency_bin=_empty_bins(), per_cluster=None, n_images=0,
                        retrieval_candidates=candidates)
    text = report.to_markdown()
    assert "| retrieval/i2t_r5 | – (k ≥ 4 candidates: 1 by construction, not reported) |" in text
    assert "| retrieval/t2i_r10 | – (k ≥ 4 candidates" in text
    assert "retrieval/i2t over 4 texts; retrieval/t2i over 4 images" in text


def _empty_concepts():
    from dynamics_assets.core.evaluate.report import _empty_per_concept

    return _empty_per_concept()


def _empty_bins():
    from dynamics_assets.core.evaluate.report import _empty_per_frequency_bin

    return _empty_per_frequency_bin()


def test_retrieval_requires_every_label_on_both_sides():
    with pytest.raises(ValueError, match="no relevant item"):
        retrieval_recall(np.eye(2), np.eye(2), np.array([0, 1]), np.array([0, 0]))


def test_accuracy_by_group():
    got = accuracy_by_group(np.array([1, 0, 1, 1, 0], bool), np.array([2, 0, 2, 5, 0]))
    assert got == {0: (2, 0.0), 2: (2, 1.0), 5: (1, 1.0)}
    assert list(got) == [0, 2, 5]


# ---------------------------------------------------------------------------------------------
# Eval set on disk (the generator's layout) and a tiny random open_clip model
# ---------------------------------------------------------------------------------------------

CONCEPT_IDS = [10, 11, 20, 21, 30, 31]  # not 0..C-1: labels must be mapped to rows
COLOURS = [(220, 30, 30), (30, 70, 220), (40, 170, 50), (240, 220, 30), (130, 40, 180), (20, 20, 20)]


def _png(rgb: tuple[int, int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.full((32, 32, 3), 128, np.uint8)
    x, y = rng.integers(0, 20, 2)
    pixels[y:y + 12, x:x + 12] = rgb
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_eval_set(eval_dir, per_concept: int = 4, captions: bool = False, drop_json_of: str | None = None):
    """Two shards, ``per_concept`` images per concept, members in key order like the generator."""
    eval_dir.mkdir(parents=True)
    samples = [(i * len(CONCEPT_IDS) + c, c) for i in range(per_concept) for c in range(len(CONCEPT_IDS))]
    half = len(samples) // 2
    for shard, chunk in enumerate((samples[:half], samples[half:])):
        members = []
        for position, (index, c) in enumerate(chunk):
            key = f"{shard:05d}{position:04d}"
            if key != drop_json_of:
                members.append((f"{key}.json", json.dumps({"concept_id": CONCEPT_IDS[c], "uid": str(index)}).encode()))
            members.append((f"{key}.png", _png(COLOURS[c], index)))
            if captions:
                members.append((f"{key}.txt", f"a shape number {c}".encode()))
        _write_tar(eval_dir / f"eval-{shard:05d}.tar", members)
    pq.write_table(pa.table({
        "concept_id": pa.array(CONCEPT_IDS[::-1], pa.int32()),  # unsorted on purpose
        "concept": [f"concept {cid}" for cid in CONCEPT_IDS[::-1]],
        "prompt_names": [[f"thing {cid}", f"object {cid}"] for cid in CONCEPT_IDS[::-1]],
        "train_frequency": pa.array([1, 2, 4, 8, 16, 1000], pa.int64()),
        "rank": pa.array([6, 5, 4, 3, 2, 1], pa.int32()),
    }), eval_dir / "concepts.parquet")
    (eval_dir / "templates.json").write_text(json.dumps(["a photo of a {}.", "a {}."]))
    return eval_dir


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    config_dir = tmp_path_factory.mktemp("model_configs")
    (config_dir / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config_dir)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=None)
    return model, preprocess, open_clip.get_tokenizer(TINY)


def test_load_eval_set_maps_concept_ids_to_rows(tmp_path):
    es = load_eval_set(write_eval_set(tmp_path / "eval"))
    assert len(es) == 24 and es.captions is None
    assert es.concept_ids.tolist() == CONCEPT_IDS  # sorted by concept_id
    assert es.keys[0] == "eval-00000.tar/000000000" and es.keys[12] == "eval-00001.tar/000010000"
    assert es.labels[:6].tolist() == [0, 1, 2, 3, 4, 5]
    assert es.train_frequency.tolist() == [1000, 16, 8, 4, 2, 1]
    assert es.templates == ("a photo of a {}.", "a {}.")
    assert es.image(0).size == (32, 32)


def test_load_eval_set_reads_captions(tmp_path):
    es = load_eval_set(write_eval_set(tmp_path / "eval", captions=True))
    assert es.captions[7] == "a shape number 1"


def test_load_eval_set_names_the_bad_sample(tmp_path):
    eval_dir = write_eval_set(tmp_path / "eval", drop_json_of="000010003")
    with pytest.raises(ValueError, match=r"eval-00001\.tar: sample 000010003: needs an image and a \.json"):
        load_eval_set(eval_dir)
    with pytest.raises(FileNotFoundError, match="no eval"):
        load_eval_set(tmp_path)


def test_load_eval_set_reads_the_generator_layout(tmp_path):
    generate(tmp_path, pairs=360, seed=1, samples_per_shard=100, eval_per_concept=1)
    es = load_eval_set(tmp_path / "eval")
    assert len(es) == 120 and len(es.keys) == len(set(es.keys)) and es.captions is None
    assert sorted(es.labels.tolist()) == list(range(120))  # balanced: one image per concept
    assert len(es.templates) > 1 and all(len(names) == 3 for names in es.prompt_names)


def test_class_embeddings_average_normalised_prompts(tiny_clip):
    model, _, tokenizer = tiny_clip
    names, templates = [["red square", "crimson box"], ["blue dot"]], ["a photo of a {}.", "a {}."]
    got = class_embeddings(model, tokenizer, names, templates, "cpu", batch_size=3)
    model.eval()
    with torch.no_grad():
        texts = [t.format(n) for n in names[0] for t in templates]
        each = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    expected = torch.nn.functional.normalize(each.mean(0), dim=-1).numpy()
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("captions", [False, True])
def test_evaluate_model_end_to_end(tmp_path, tiny_clip, captions):
    model, preprocess, tokenizer = tiny_clip
    model.train()
    eval_dir = write_eval_set(tmp_path / "eval", captions=captions)
    clusters = np.arange(24) % 5
    report = evaluate_model(model, preprocess, tokenizer, eval_dir, batch_size=7, cluster_of_image=clusters)
    assert model.training  # restored
    m = report.metrics
    for key in ("zero_shot/top1", "zero_shot/top5", "zero_shot/mean_per_class", "zero_shot/head",
                "zero_shot/middle", "zero_shot/tail", "retrieval/i2t_r1", "retrieval/t2i_r10",
                "zero_shot/mean_per_cluster", "zero_shot/freq_bin_512_1023"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["zero_shot/top1"] <= m["zero_shot/top5"] and m["retrieval/i2t_r1"] <= m["retrieval/i2t_r5"]
    pc = report.per_concept.to_pydict()
    assert pc["concept_id"] == CONCEPT_IDS and sum(pc["n"]) == 24
    assert pc["bucket"] == ["head", "middle", "middle", "middle", "middle", "tail"]  # round(1.2) = 1 each
    assert report.per_cluster.column("n").to_pylist() == [5, 5, 5, 5, 4]

    paths = report.save(tmp_path / "report")
    assert {p.name for p in resolve(tmp_path / "report").iterdir()} - {"_version.json"} == {
        "metrics.json", "per_concept.parquet", "per_frequency_bin.parquet", "per_cluster.parquet",
        "report.md", "accuracy_vs_frequency.png", "per_image.parquet"}
    per_image = pq.read_table(paths["per_image.parquet"]).to_pydict()
    assert len(per_image["correct"]) == 24 and sum(per_image["correct"]) / 24 == pytest.approx(m["zero_shot/top1"])
    assert json.loads(paths["metrics.json"].read_text()) == pytest.approx(m)
    assert pq.read_table(paths["per_concept.parquet"]).num_rows == 6
    assert "| tail |" in paths["report.md"].read_text()
    assert paths["accuracy_vs_frequency.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = evaluate_model(model, preprocess, tokenizer, load_eval_set(eval_dir), batch_size=24)
    assert again.metrics == pytest.approx({k: v for k, v in m.items() if "cluster" not in k})


def test_report_of_few_clusters_and_tied_frequencies(tmp_path, tiny_clip):
    """Issue 18's report fixes end to end: 6 pool clusters are "6 of 6", not "10 of 6"; with most
    concepts at frequency 0 they are all tail (none split off by concept order) and the report
    says why the buckets are not 20 / 60 / 20."""
    model, preprocess, tokenizer = tiny_clip
    eval_dir = write_eval_set(tmp_path / "eval", per_concept=2)
    concepts = pq.read_table(eval_dir / "concepts.parquet")
    concepts = concepts.set_column(concepts.schema.get_field_index("train_frequency"), "train_frequency",
                                   pa.array([0, 0, 0, 0, 5, 9], pa.int64()))  # concept ids 31, 30, 21, 20 at 0
    pq.write_table(concepts, eval_dir / "concepts.parquet")
    report = evaluate_model(model, preprocess, tokenizer, eval_dir, batch_size=12,
                            cluster_of_image=np.arange(12) % 6)
    pc = report.per_concept.to_pydict()
    assert dict(zip(pc["concept_id"], pc["bucket"])) == {10: "head", 11: "middle", 20: "tail", 21: "tail",
                                                         30: "tail", 31: "tail"}
    assert "the tail holds 4 of 6 concepts (nominally 1): 4 concepts tie at frequency 0" in report.notes["buckets"]
    text = report.to_markdown()
    assert "## Lowest-accuracy pool clusters (6 of 6)" in text and "10 of 6" not in text
    assert "**Ties**: ties in training frequency" in text and "the middle holds 1 of 6 concepts (nominally 4)" in text
    assert text.count("| tail | 4 | 8 | 0–0 |") == 1
    assert "retrieval/i2t over 12 texts; retrieval/t2i over 12 images" in text
    assert "retrieval/i2t_r10" in report.metrics and "retrieval_k" not in report.notes  # 10 < 12: reported


def test_evaluate_model_checks_cluster_length(tmp_path, tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    with pytest.raises(ValueError, match="3 entries for 24 eval images"):
        evaluate_model(model, preprocess, tokenizer, write_eval_set(tmp_path / "eval"), cluster_of_image=np.zeros(3))


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


class _LinearPair(torch.nn.Module):
    """Image: one Linear on the flattened pixels; text: embedding lookup (no FLOPs) + Linear."""

    def __init__(self):
        super().__init__()
        self.image = torch.nn.Linear(3 * 4 * 4, 8)
        self.embed = torch.nn.Embedding(10, 6)
        self.text = torch.nn.Linear(6, 8)

    def encode_image(self, x):
        return self.image(x.flatten(1))

    def encode_text(self, tokens):
        return self.text(self.embed(tokens).mean(1))


def test_flops_hand_computed():
    # 2 FLOPs per multiply-add: image 2·48·8, text 2·6·8 (the mean is not a counted op)
    assert forward_flops_per_pair(_LinearPair(), 4, 5) == 2 * 48 * 8 + 2 * 6 * 8
    assert forward_flops(_LinearPair(), (4, 4), 5, batch_size=3) == 3 * (2 * 48 * 8 + 2 * 6 * 8)
    assert train_flops(1000, 864) == 3 * 864 * 1000


def test_flops_of_tiny_clip_scale_with_batch(tiny_clip):
    model = tiny_clip[0]
    one = forward_flops_per_pair(model, 32, 32)
    # lower bound: the vision transformer's 2 layers of 4·64² (qkv + out) + 2·4·64² (MLP) on 17 tokens
    assert one > 2 * 17 * 2 * 12 * 64 * 64
    assert forward_flops(model, 32, 32, batch_size=2) == pytest.approx(2 * one, rel=0.01)


def test_load_eval_set_takes_concepts_from_another_set(tmp_path):
    """A second set of the same concepts (the generator's eval_train_style/: tars only)."""
    import shutil

    eval_dir = write_eval_set(tmp_path / "eval")
    (tmp_path / "train_style").mkdir()
    for tar in eval_dir.glob("eval-*.tar"):
        shutil.copy(tar, tmp_path / "train_style" / tar.name)
    with pytest.raises(FileNotFoundError):
        load_eval_set(tmp_path / "train_style")
    other = load_eval_set(tmp_path / "train_style", concepts_dir=eval_dir)
    same = load_eval_set(eval_dir)
    assert other.labels.tolist() == same.labels.tolist() and other.templates == same.templates
