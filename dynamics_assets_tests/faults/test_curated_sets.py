"""Probes over the curated and target sets (issue 21): a curated set that overlaps the evaluation
set, a target set with nothing to use, a DFN threshold outside its range; each refused with the
counts / setting named, through the raw_shards asset where the user meets it."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from dynamics_assets.core.ingest.curated import CuratedSetError, check_curated, check_no_overlap, check_target
from dynamics_assets.core.ingest.synthetic import generate, generate_curated

PAIRS = dict(pairs=360, samples_per_shard=120, eval_per_concept=1, seed=4)


def _tar(path: Path, samples) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    raw = tmp_path_factory.mktemp("curated") / "raw"
    ds = generate(raw, **PAIRS)
    return ds, generate_curated(raw, seed=4, per_concept=1, samples_per_shard=120)


def _leaky(pool, tmp_path) -> Path:
    """The clean curated set plus 3 eval samples copied in: 2 with their uid (one of them also
    with its image), 1 image only under a new uid."""
    ds, curated = pool
    leaky = tmp_path / "leaky"
    shutil.copytree(curated, leaky)
    with tarfile.open(ds.eval_shards[0]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({n.split(".")[0] for n in members})[:3]
    metas = [json.loads(members[f"{k}.json"]) for k in keys]
    samples = [("x0", {"json": json.dumps({"uid": metas[0]["uid"]}).encode(), "png": members[f"{keys[0]}.png"],
                       "txt": b"a red circle"}),
               ("x1", {"json": json.dumps({"uid": metas[1]["uid"]}).encode(),
                       "png": _other_png(curated), "txt": b"a box"}),
               ("x2", {"json": json.dumps({"uid": "f" * 32}).encode(), "png": members[f"{keys[2]}.png"],
                       "txt": b"a star"})]
    _tar(leaky / "curated-99999.tar", samples)
    return leaky


def _other_png(curated: Path) -> bytes:
    with tarfile.open(next(curated.glob("*.tar"))) as tar:
        m = next(m for m in tar.getmembers() if m.name.endswith(".png"))
        return tar.extractfile(m).read()


def test_a_curated_set_overlapping_the_eval_set_is_refused_with_counts(pool, tmp_path, record):
    ds, curated = pool
    assert not check_no_overlap(check_curated(curated), ds.eval_dir).any  # the generator's clean set is apart
    leaky = _leaky(pool, tmp_path)
    with pytest.raises(CuratedSetError, match=r"overlaps the evaluation set .*: 2 of its 123 pairs share a uid "
                                              r"with an eval sample, 2 share an image \(SHA-256"):
        check_no_overlap(check_curated(leaky), ds.eval_dir)
    record("refused: 'curated set … overlaps the evaluation set …: 2 of its 123 pairs share a uid with an eval "
           "sample, 2 share an image (SHA-256 of the image bytes) with one of the 120 eval images'")


def test_the_overlap_is_refused_by_raw_shards_before_any_training(pool, tmp_path, record):
    from dynamics_assets.defs.ingest.assets import raw_shards
    from dynamics_assets.defs.resources import StorageResource

    ds, _ = pool
    leaky = _leaky(pool, tmp_path)
    # the synthetic pool of the same seed (hence the same eval set) with the leaky folder as its curated set
    config = {"ops": {"raw_shards": {"config": {**PAIRS, "curated": str(leaky)}}}}
    result = dg.materialize_to_memory([raw_shards], resources={"storage": StorageResource(root=str(tmp_path / "d"))},
                                      run_config=config, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0].step_failure_data.error.message
    assert "overlaps the evaluation set" in failure and "2 share an image" in failure
    record("raw_shards fails: 'raw_shards: curated set … overlaps the evaluation set …' (nothing trained)")


@pytest.mark.parametrize("make, expected", [
    (lambda d: None, r"no images .* and no classnames.txt"),
    (lambda d: (d / "classnames.txt").write_text("\n \n"), r"classnames.txt: lists no class name"),
    (lambda d: (d / "notes.md").write_text("x"), r"no images"),
])
def test_a_target_set_with_nothing_to_use_is_refused(tmp_path, make, expected, record):
    target = tmp_path / "target"
    target.mkdir()
    make(target)
    with pytest.raises(CuratedSetError, match=expected):
        check_target(target)
    record(f"refused: target set {expected.replace(chr(92), '')}")


def test_a_curated_folder_without_shards_and_dfn_fractions_outside_range_are_refused(tmp_path, record):
    from dynamics_assets.core.sample import make_sampler
    from dynamics_assets.core.sample.spec import SettingError, normalise_sampler_spec

    with pytest.raises(CuratedSetError, match=r"curated set .*: no .tar shards in it"):
        check_curated(tmp_path)
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(SettingError, match=r"sampler\.fraction: .* outside its range"):
            normalise_sampler_spec({"strategy": "dfn", "fraction": bad}, "recipe 'x': sampler")
        np.save(tmp_path / "scores.npy", np.zeros(3, np.float32))
        with pytest.raises(ValueError, match=r"'dfn'\.fraction: .* outside its range"):
            make_sampler("dfn", fraction=bad, scores=str(tmp_path / "scores.npy"))
    record("refused: dfn.fraction 0, 1.5, -0.1, true: 'a number in (0, 1]'; a curated folder without .tar shards")
