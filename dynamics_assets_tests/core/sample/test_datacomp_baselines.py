"""DataComp's baselines as strategies (basic, LAION-2B, text-based, image-based filtering and
image-based ∩ CLIP score) on a pool with planted cases whose answers are known: each keeps and
drops exactly what its rule says; the same on a DataComp-layout pool that ships embeddings and
no images; thresholds outside their range refused when a recipe is read or a sampler built."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dynamics_assets.core.ingest.manifest import FORMAT_VERSION, MANIFEST_SCHEMA, METADATA_KEY
from dynamics_assets.core.sample import (BasicFilter, ClipScoreFilter, ClusterPool, ImageFilter, Laion2BFilter,
                                         TextFilter, make_sampler, read_plan, sampler_from_spec, write_plan)
from dynamics_assets.core.sample.spec import SettingError, normalise_sampler_spec
from dynamics_assets.core.sample.captions import language_of

D = 16
EN = "a photo of the {} on a wooden table in the kitchen"
B32 = {"model_name": "ViT-B-32", "weights": "tag:ViT-B-32/openai", "precision": "fp16"}
TINY = {"model_name": "dynamics-mini-32", "weights": "sha256:00", "precision": "fp32"}
CLASSES = ["red triangle", "blue circle"]

# caption, width, height, cluster (-1: quarantined after clustering; 2: off-target), clip score
ROWS = [
    (EN.format("red triangle"), 400, 300, 0, 0.35),                        # 0  keeps everywhere
    (EN.format("blue circle"), 300, 300, 1, 0.33),                         # 1
    ("ein rotes Dreieck auf dem Tisch in der Küche neben dem Fenster", 400, 300, 0, 0.36),  # 2 German
    ("un cercle bleu sur la table de la cuisine près de la fenêtre", 400, 300, 1, 0.34),    # 3 French
    ("red triangle", 400, 300, 0, 0.37),                                   # 4 two words
    ("a b c", 400, 300, 1, 0.31),                                          # 5 five characters
    (EN.format("red triangle"), 150, 400, 0, 0.30),                        # 6 small side 150
    (EN.format("blue circle"), 200, 600, 1, 0.32),                         # 7 side 200, aspect 3.0: kept
    (EN.format("red triangle"), 700, 200, 0, 0.20),                        # 8 aspect 3.5
    (EN.format("blue circle"), 200, 800, 1, 0.21),                         # 9 aspect 4
    (EN.format("red triangle"), None, None, 0, 0.22),                      # 10 size unknown
    (EN.format("red triangle"), 500, 500, 2, 0.38),                        # 11 off-target cluster
    ("a photograph of the mountains at sunset in the winter", 500, 500, 2, 0.19),  # 12 off-target, no class
    ("a photograph of the mountains at sunset in the winter", 640, 480, 0, 0.18),  # 13 names no class
    (EN.format("red triangle"), 640, 480, -1, 0.39),                       # 14 quarantined
    ("three RED-TRIANGLES standing on a white shelf", 640, 480, 1, 0.23),  # 15 case, hyphen, plural
    ("a bluecircle logo printed on a white coffee mug", 640, 480, 0, 0.24),  # 16 not a whole word
    ("the quick brown fox jumps over the lazy dog", 640, 480, 1, 0.29),    # 17 plain English
]
ENGLISH = {0, 1, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17}
NAMES_A_CLASS = {0, 1, 4, 6, 7, 8, 9, 10, 11, 14, 15}  # whole words, case-insensitive, plural; not 16
N = len(ROWS)
VALID = {i for i in range(N) if ROWS[i][3] >= 0}


@dataclass
class Pool:
    root: Path
    centroids: np.ndarray
    scores: np.ndarray  # image·text cosine as stored (fp16 rows, float32 dot)

    def pool(self, **kw) -> ClusterPool:
        return ClusterPool.from_artifacts(self.root / "clusters", 3, self.root / "emb",
                                          manifest_dir=self.root / "manifest", **kw)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write_manifest(mdir: Path, shard: str, rows: list, ids: list[str]) -> None:
    mdir.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    cols = {f.name: [None] * n for f in MANIFEST_SCHEMA}
    cols.update(sample_id=ids, shard=[shard] * n, row=list(range(n)), caption=[r[0] for r in rows],
                width=[r[1] for r in rows], height=[r[2] for r in rows], status=["ok"] * n)
    meta = {METADATA_KEY: json.dumps({"shard": shard, "format_version": FORMAT_VERSION}).encode()}
    table = pa.table({f.name: pa.array(cols[f.name], f.type) for f in MANIFEST_SCHEMA},
                     schema=MANIFEST_SCHEMA.with_metadata(meta))
    pq.write_table(table, mdir / f"{shard}.parquet")


def build(root: Path, encoder: dict) -> Pool:
    rng = np.random.default_rng(0)
    centroids = unit(rng.normal(size=(3, D))).astype(np.float32)
    cluster = np.array([r[3] for r in ROWS], np.int32)
    image = unit(centroids[np.maximum(cluster, 0)] + 0.1 * rng.normal(size=(N, D)))
    ortho = unit(rng.normal(size=(N, D)))
    ortho = unit(ortho - np.einsum("ij,ij->i", ortho, image)[:, None] * image)
    s = np.array([r[4] for r in ROWS])
    text = s[:, None] * image + np.sqrt(1 - s ** 2)[:, None] * ortho
    ids = [f"{i:032x}" for i in range(N)]
    shards = [("shard-00000", 0, 10), ("shard-00001", 10, N)]
    for name, a, b in shards:
        d = root / "emb" / name
        d.mkdir(parents=True)
        np.save(d / "image.npy", image[a:b].astype(np.float16))
        np.save(d / "text.npy", text[a:b].astype(np.float16))
        np.save(d / "sample_id.npy", np.array([i.encode() for i in ids[a:b]], dtype="S32"))
        (d / "meta.json").write_text(json.dumps({"encoder": encoder}))
        write_manifest(root / "manifest", name, ROWS[a:b], ids[a:b])
    c = root / "clusters"
    c.mkdir()
    np.save(c / "cluster_id.npy", cluster)
    np.save(c / "distance.npy", np.zeros(N, np.float32))
    np.save(c / "centroids.npy", centroids)
    stored_i = image.astype(np.float16).astype(np.float32)
    stored_t = text.astype(np.float16).astype(np.float32)
    return Pool(root, centroids, np.einsum("ij,ij->i", stored_i, stored_t))


@pytest.fixture(scope="module")
def b32(tmp_path_factory) -> Pool:
    return build(tmp_path_factory.mktemp("b32"), B32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Pool:
    return build(tmp_path_factory.mktemp("tiny"), TINY)


def kept(mask: np.ndarray) -> set[int]:
    return set(np.flatnonzero(mask).tolist())


def test_the_planted_captions_are_identified_as_planted():
    langs = language_of([r[0] for r in ROWS])
    assert {i for i in range(N) if langs[i] == "en"} == ENGLISH
    assert langs[2] == "de" and langs[3] == "fr"


def test_basic_filter_keeps_exactly_its_rule(b32):
    plan = BasicFilter().draw(b32.pool(), epoch=1, seed=0)
    assert set(plan.indices.tolist()) == {0, 1, 7, 11, 12, 13, 15, 16, 17}
    # how many valid samples fail each rule: language 2, 3, 5; words 4; characters 5; smaller side
    # 6 and 10 (size unknown); aspect 8, 9 and 10
    assert plan.meta["failed"] == {"language": 3, "min_words": 1, "min_chars": 1, "min_side": 2, "max_aspect": 3}
    # thresholds are parameters: no size rules, two-word captions allowed, no language rule
    loose = BasicFilter(language=None, min_words=2, min_side=0, max_aspect=None).keep_mask(b32.pool(), seed=0)
    assert kept(loose) == VALID - {5}
    assert kept(BasicFilter(max_aspect=3.4, min_side=150).keep_mask(b32.pool(), seed=0)) == {0, 1, 6, 7, 11, 12, 13, 15, 16, 17}


def test_basic_filter_refuses_a_pool_of_small_images_naming_the_rule(b32):
    with pytest.raises(ValueError, match=r"basic_filter keeps none .*'min_side': 17"):
        BasicFilter(min_side=10_000).keep_mask(b32.pool(), seed=0)


def test_laion2b_filter_on_openai_b32_uses_0_28_as_is(b32):
    plan = Laion2BFilter().draw(b32.pool(), epoch=1, seed=0)
    expected = {i for i in VALID & ENGLISH if b32.scores[i] >= np.float32(0.28)}
    assert expected == {0, 1, 4, 6, 7, 11, 17}
    assert set(plan.indices.tolist()) == expected
    info = plan.meta["laion2b"]
    assert info["translated"] is False and info["threshold"] == 0.28 and info["threshold_source"].startswith("OpenAI")


def test_laion2b_filter_translates_the_threshold_by_quantile_for_another_encoder(tiny, tmp_path):
    pool = tiny.pool()
    f = 5 / len(VALID)
    plan = Laion2BFilter(reference_fraction=f).draw(pool, epoch=1, seed=0)
    english = sorted(VALID & ENGLISH, key=lambda i: (-tiny.scores[i], i))
    assert set(plan.indices.tolist()) == set(english[:5]) == {11, 4, 0, 1, 7}
    info = plan.meta["laion2b"]
    assert info["translated"] is True and info["translated_from"] == 0.28 and info["reference_fraction"] == f
    assert info["threshold"] == pytest.approx(float(tiny.scores[7]))  # the lowest kept score
    # a threshold the user gives for this encoder is used as is
    own = Laion2BFilter(encoder_threshold=0.3).draw(pool, epoch=1, seed=0)
    assert set(own.indices.tolist()) == {i for i in VALID & ENGLISH if tiny.scores[i] >= np.float32(0.3)}
    assert own.meta["laion2b"]["translated"] is False
    # written and read back, the meta says what was used
    back = read_plan(write_plan(tmp_path / "plan", plan))
    assert back.meta["laion2b"]["translated"] is True and np.array_equal(back.indices, plan.indices)


def test_text_filter_keeps_english_captions_naming_a_class(b32, tmp_path):
    plan = TextFilter(classnames=CLASSES).draw(b32.pool(), epoch=1, seed=0)
    assert set(plan.indices.tolist()) == VALID & ENGLISH & NAMES_A_CLASS
    assert 16 not in plan.indices and 15 in plan.indices
    (tmp_path / "classnames.txt").write_text("blue circle\n\n")
    assert kept(TextFilter(classnames=str(tmp_path)).keep_mask(b32.pool(), seed=0)) == {1, 7, 9}
    assert kept(TextFilter(classnames=CLASSES, language=None).keep_mask(b32.pool(), seed=0)) == VALID & NAMES_A_CLASS
    back = read_plan(write_plan(tmp_path / "plan", plan))
    assert back.meta["text_filter"]["classes"] == 2 and back.meta["params"]["classnames"] == CLASSES


def test_image_filter_keeps_the_clusters_nearest_the_targets(b32, tmp_path):
    rng = np.random.default_rng(1)
    targets = unit(b32.centroids[[0, 0, 1]] + 0.05 * rng.normal(size=(3, D))).astype(np.float32)
    np.save(tmp_path / "t.npy", targets)
    plan = ImageFilter(target_embeddings=str(tmp_path / "t.npy")).draw(b32.pool(), epoch=1, seed=0)
    captions_ok = VALID & (ENGLISH - {5})  # two words and six characters: "red triangle" passes
    assert set(plan.indices.tolist()) == {i for i in captions_ok if ROWS[i][3] in (0, 1)}
    assert plan.meta["image_filter"]["clusters"] == [0, 1]
    # one target near cluster 2: only the off-target cluster is kept (no caption rule)
    np.save(tmp_path / "t2.npy", b32.centroids[[2]])
    only2 = ImageFilter(target_embeddings=str(tmp_path / "t2.npy"), language=None, min_words=0, min_chars=0)
    assert kept(only2.keep_mask(b32.pool(), seed=0)) == {11, 12}
    two = ImageFilter(target_embeddings=str(tmp_path / "t2.npy"), neighbours=3, language=None, min_words=0, min_chars=0)
    assert kept(two.keep_mask(b32.pool(), seed=0)) == VALID


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    (np.zeros((0, D), np.float32), "no embeddings"),
    (np.ones(D, np.float32), "no embeddings"),
    (np.zeros((2, D), np.float32), "non-finite or zero"),
])
def test_image_filter_refuses_a_target_set_without_embeddings(tmp_path, content, message):
    path = tmp_path / "t.npy"
    if content is not None:
        np.save(path, content)
    with pytest.raises((ValueError, FileNotFoundError), match=f"target_embeddings: .*{message}"):
        ImageFilter(target_embeddings=str(path))


def test_image_filter_refuses_targets_of_another_encoder_space(b32, tmp_path):
    np.save(tmp_path / "t.npy", np.ones((2, D + 1), np.float32))
    with pytest.raises(ValueError, match=r"dimension 17, the pool's centroids 16"):
        ImageFilter(target_embeddings=str(tmp_path / "t.npy")).keep_mask(b32.pool(), seed=0)


def test_image_based_intersect_clip_score_is_a_composition(b32, tmp_path):
    np.save(tmp_path / "t.npy", b32.centroids[[0]])
    steps = [{"strategy": "clip_score", "fraction": 0.5},
             {"strategy": "image_filter", "target_embeddings": str(tmp_path / "t.npy")}]
    spec = normalise_sampler_spec({"strategy": "compose", "steps": steps}, "recipe")
    plan = sampler_from_spec(spec).draw(b32.pool(), epoch=1, seed=0)
    pool = b32.pool()
    both = ClipScoreFilter(0.5).keep_mask(pool, seed=0) & ImageFilter(str(tmp_path / "t.npy")).keep_mask(pool, seed=0)
    # CLIP score's top 8 of 17: 11, 4, 2, 0, 3, 1, 7, 5; of those cluster 0 with an English caption: 0, 4
    assert set(plan.indices.tolist()) == kept(both) == {0, 4}
    # DataComp's protocol: the survivors fill the pool's budget (repeats)
    full = sampler_from_spec(normalise_sampler_spec(
        {"strategy": "compose", "steps": [*steps, {"strategy": "uniform", "budget": 1.0}]}, "recipe"))
    plan = full.draw(b32.pool(), epoch=1, seed=0)
    assert plan.size == len(VALID) and set(plan.indices.tolist()) == {0, 4}
    assert plan.meta["pruned"][1]["image_filter"]["kept"] == 2


def test_compose_records_the_laion2b_threshold(tiny):
    spec = normalise_sampler_spec({"strategy": "compose", "steps": [
        {"strategy": "laion2b_filter", "reference_fraction": 0.5}, {"strategy": "uniform", "budget": 1.0}]}, "r")
    plan = sampler_from_spec(spec).draw(tiny.pool(), epoch=1, seed=0)
    assert plan.meta["pruned"][0]["laion2b"]["translated"] is True


@pytest.mark.parametrize("spec, setting", [
    ({"strategy": "basic_filter", "min_side": -1}, "min_side"),
    ({"strategy": "basic_filter", "max_aspect": 0.5}, "max_aspect"),
    ({"strategy": "basic_filter", "min_words": 2.5}, "min_words"),
    ({"strategy": "basic_filter", "language": "English"}, "language"),
    ({"strategy": "laion2b_filter", "threshold": 1.5}, "threshold"),
    ({"strategy": "laion2b_filter", "reference_fraction": 0}, "reference_fraction"),
    ({"strategy": "laion2b_filter", "encoder_threshold": -2}, "encoder_threshold"),
    ({"strategy": "text_filter", "classnames": []}, "classnames"),
    ({"strategy": "image_filter", "target_embeddings": "t.npy", "neighbours": 0}, "neighbours"),
])
def test_settings_outside_their_range_are_refused_naming_them(spec, setting):
    with pytest.raises(SettingError, match=rf"recipe 'x': sampler\.{setting}: .*(outside its range|needs it)"):
        normalise_sampler_spec(spec, "recipe 'x': sampler")
    with pytest.raises(ValueError, match=rf"\.{setting}:"):
        make_sampler(**spec)
    steps = {"strategy": "compose", "steps": [spec, {"strategy": "uniform", "budget": 1.0}]}
    with pytest.raises(SettingError, match=rf"steps\[0\]\.{setting}"):
        normalise_sampler_spec(steps, "recipe 'x': sampler")


@pytest.mark.parametrize("spec, setting", [({"strategy": "text_filter"}, "classnames"),
                                           ({"strategy": "image_filter"}, "target_embeddings"),
                                           ({"strategy": "dfn"}, "scores")])
def test_a_recipe_may_leave_out_what_the_lineage_fills_in_a_strategy_may_not(spec, setting):
    """The pool's class names, the target embeddings and the DFN scores are filled in by sample_plan
    (defs/sample/assets.py); built without them, the strategy is refused naming the setting."""
    assert normalise_sampler_spec(spec, "recipe 'x': sampler") == spec
    with pytest.raises(ValueError, match=rf"\.{setting}:"):
        make_sampler(**spec)


def test_a_language_the_identifier_does_not_know_is_refused():
    with pytest.raises(ValueError, match="language 'zz' is not one the language identifier knows"):
        BasicFilter(language="zz")


def test_filters_refuse_a_pool_without_its_manifest_or_with_another(b32, tmp_path):
    bare = ClusterPool.from_artifacts(b32.root / "clusters", 3, b32.root / "emb")
    with pytest.raises(ValueError, match="manifest_dir"):
        BasicFilter().keep_mask(bare, seed=0)
    other = tmp_path / "manifest"
    write_manifest(other, "shard-00000", ROWS[:10], [f"{i:032x}" for i in range(10)])
    write_manifest(other, "shard-00001", ROWS[10:], [f"{i + 1:032x}" for i in range(10, N)])
    pool = ClusterPool.from_artifacts(b32.root / "clusters", 3, b32.root / "emb", manifest_dir=other)
    with pytest.raises(ValueError, match="list different sample ids"):
        BasicFilter().keep_mask(pool, seed=0)


# --------------------------------------------------------------- a pool that ships embeddings


@pytest.fixture(scope="module")
def datacomp(tmp_path_factory):
    from dynamics_assets.core.cluster.curate import ClusterParams, cluster_pool
    from dynamics_assets_tests.fixtures.minipools import write_datacomp_pool
    from dynamics_assets.core.ingest.precomputed import has_images, ingest_precomputed

    tmp = tmp_path_factory.mktemp("datacomp")
    mini = write_datacomp_pool(tmp / "pool", parts=2, rows_per_part=60)
    s = ingest_precomputed(mini.root, tmp / "manifest", tmp / "embeddings")
    assert not has_images(s.manifest_dir)
    clusters = cluster_pool(s.embeddings_dir, s.manifest_dir, tmp / "clusters", ClusterParams(k=4, sample_size=1000, niter=5))
    pool = ClusterPool.from_artifacts(clusters.clusters_dir, clusters.k, embeddings_dir=s.embeddings_dir,
                                      manifest_dir=s.manifest_dir)
    rows: dict[str, dict] = {}
    for part in sorted((mini.root / "metadata").glob("*.parquet")):
        for r in pq.read_table(part).to_pylist():
            rows.setdefault(r["uid"].lower(), r)
    return pool, [rows[u] for u in mini.ok_ids]


def test_filters_run_on_a_datacomp_pool_without_images(datacomp):
    pool, rows = datacomp
    text = [r["text"].strip() for r in rows]
    english = language_of(text) == "en"
    side = np.array([min(r["original_width"], r["original_height"]) for r in rows])
    aspect = np.array([max(r["original_width"], r["original_height"]) for r in rows]) / side
    words = np.array([len(t.split()) for t in text])
    expected = english & (words >= 3) & (side >= 200) & (aspect <= 3.0)
    assert 0 < expected.sum() < len(rows)
    assert kept(BasicFilter().keep_mask(pool, seed=0)) == kept(expected)
    # LAION-2B: DataComp's shipped B/32 score with 0.28 as is
    score = np.array([r["clip_b32_similarity_score"] for r in rows])
    plan = Laion2BFilter().draw(pool, epoch=1, seed=0)
    assert set(plan.indices.tolist()) == kept(english & (score >= 0.28))
    assert plan.meta["laion2b"]["translated"] is False and "clip_b32_similarity_score" in plan.meta["laion2b"]["score"]
    named = np.array(["red triangle" in t for t in text])
    assert kept(TextFilter(classnames=["red triangle"]).keep_mask(pool, seed=0)) == kept(english & named)


def test_the_commented_datacomp_recipes_of_experiments_yaml_parse_and_build(tmp_path):
    """data/experiments.yaml carries the baselines commented out (off by default); uncommented
    they are valid recipes of the experiments file, and build (targets given)."""
    import yaml

    from dynamics_assets.defs.experiments import load_experiments

    text = (Path(__file__).resolve().parents[3] / "data" / "experiments.yaml").read_text()
    block = text[text.index("# datacomp-begin\n") + len("# datacomp-begin\n"):text.index("# datacomp-end")]
    assert all(line.startswith("#") for line in block.splitlines())
    uncommented = text.replace(block, "".join(line[1:] + "\n" for line in block.splitlines()))
    (tmp_path / "e.yaml").write_text(uncommented)
    exp = load_experiments(tmp_path / "e.yaml")
    names = {"datacomp-basic", "datacomp-laion2b", "datacomp-text", "datacomp-image", "datacomp-image-clip30"}
    assert names <= {r.name for r in exp.recipes.values()}
    assert yaml.safe_load(text)["default_recipe"] == exp.default_keys[0].split(".")[0] == "dynamics-50"
    np.save(tmp_path / "t.npy", np.ones((1, D), np.float32))
    (tmp_path / "c.txt").write_text("red triangle\n")
    for recipe in {r.name: r for r in exp.recipes.values() if r.name in names}.values():
        spec = json.loads(json.dumps(recipe.sampler).replace("data/targets/image_embeddings.npy", str(tmp_path / "t.npy"))
                          .replace("data/targets/classnames.txt", str(tmp_path / "c.txt")))
        assert sampler_from_spec(spec).steps[-1].name in ("uniform",)
