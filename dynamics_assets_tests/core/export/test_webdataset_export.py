"""Webdataset export of an epoch's plan: exactly the plan (repeats written), original bytes, a
committed version whose recorded open_clip_train command trains on it (run for real)."""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynamics_assets.core.export.webdataset import export_plan, read_export
from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.ingest.pool import pool_shards, records
from dynamics_assets.core.io.versions import StalePlanError
from dynamics_assets.core.sample.base import Plan
from dynamics_assets.core.sample.plan_io import write_plan

POOL = "pool-version-a"


def _image(rng: np.random.Generator, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """3 source shards × 12 pairs (png and jpg), unique captions; one pair quarantined (empty caption)."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    shards_dir = root / "shards"
    shards_dir.mkdir()
    source = {}  # caption -> (ext, image bytes)
    for s in range(3):
        with tarfile.open(shards_dir / f"{s:05d}.tar", "w") as tar:
            for r in range(12):
                key, ext = f"{s:05d}{r:04d}", ("png" if r % 2 else "jpg")
                data = _image(rng, "PNG" if ext == "png" else "JPEG")
                caption = "" if (s, r) == (1, 3) else f"pair {s}-{r} caf\u00e9 number {s * 12 + r}"
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.txt", caption.encode())
                if caption:
                    source[caption] = (ext, data)
    summary = build_manifest(sorted(shards_dir.glob("*.tar")), root / "raw_pairs")
    manifest_dir = summary.version_dir
    ids = [r.sample_id for r in records(pool_shards(manifest_dir), None, None)]
    assert len(ids) == 35
    # the plan: 21 distinct pool positions, multiplicities 1, 2 and 3 summing to 32 (4 batches of 8)
    plan_rng = np.random.default_rng(1)
    indices = np.sort(plan_rng.choice(35, 21, replace=False)).astype(np.uint32)
    mult = plan_rng.permutation([1] * 14 + [2] * 3 + [3] * 4).astype(np.uint16)
    plan = Plan(indices, mult, np.array([35]), np.array([32.0]), np.array([32]),
                {"recipe": "test.s0", "epoch": 0, "strategy": "hand"})
    plan_dir = write_plan(root / "plan", plan, pool_version=POOL)
    return {"root": root, "manifest": manifest_dir, "shards": shards_dir, "plan": plan_dir, "ids": ids,
            "indices": indices, "mult": mult, "source": source}


def _read_tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def _samples(export_dir: Path, shards) -> list[dict]:
    out = []
    for name in shards:
        members = _read_tar(export_dir / name)
        assert len(members) % 3 == 0
        for i in range(0, len(members), 3):
            (img_name, img), (txt_name, txt), (json_name, meta) = members[i:i + 3]
            key, ext = img_name.split(".", 1)
            assert (txt_name, json_name) == (f"{key}.txt", f"{key}.json")
            out.append({"key": key, "ext": ext, "image": img, "caption": txt.decode(), "meta": json.loads(meta)})
    return out


def _expected(pool) -> Counter:
    return Counter({pool["ids"][int(i)]: int(k) for i, k in zip(pool["indices"], pool["mult"])})


def test_export_holds_exactly_the_plan_with_original_bytes(pool, tmp_path):
    exp = export_plan(pool["plan"], pool["manifest"], pool["shards"], tmp_path / "export",
                      pool=POOL, samples_per_shard=10, workers=1, batch_size=8)
    assert (exp.samples, exp.distinct) == (32, 21)
    assert exp.shards == ("00000.tar", "00001.tar", "00002.tar", "00003.tar")
    samples = _samples(exp.version_dir, exp.shards)
    assert [len(_read_tar(exp.version_dir / n)) // 3 for n in exp.shards] == [10, 10, 10, 2]
    assert len({s["key"] for s in samples}) == 32  # distinct keys: webdataset never merges copies
    assert Counter(s["meta"]["sample_id"] for s in samples) == _expected(pool)
    for s in samples:
        m = s["meta"]
        assert s["key"] == f"{m['sample_id']}_{m['copy']}" and 0 <= m["copy"] < m["multiplicity"]
        assert (s["ext"], s["image"]) == pool["source"][s["caption"]]  # the very bytes, same extension
        assert pool["ids"][m["pool_index"]] == m["sample_id"]
        assert m["source_key"] == f"{m['source_shard'][:5]}{m['source_row']:04d}"
    assert [s["meta"]["pool_index"] for s in samples] == sorted(s["meta"]["pool_index"] for s in samples)
    manifest = json.loads((exp.version_dir / "manifest.json").read_text())
    assert manifest["samples"] == 32 and manifest["shards"] == list(exp.shards)
    assert manifest["train_data"] == "$EXPORT_DIR/{00000..00003}.tar"
    assert exp.command == (f'python -m open_clip_train.main --dataset-type webdataset --train-data '
                           f'"{exp.version_dir}/{{00000..00003}}.tar" --train-num-samples 32 '
                           f'--model "local-dir:{exp.version_dir}/model" --batch-size 8 --workers 1')
    assert json.loads((exp.version_dir / "model" / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"] == 128
    refs = json.loads((exp.version_dir / "_version.json").read_text())["refs"]
    assert set(refs) == {"plan", "manifest"}
    # the same inputs give the same version; a seeded shuffle: same samples, another (fixed) order
    again = export_plan(pool["plan"], pool["manifest"], pool["shards"], tmp_path / "export",
                        pool=POOL, samples_per_shard=10, workers=1, batch_size=8)
    assert again.version_id == exp.version_id and again.reused
    mixed = [export_plan(pool["plan"], pool["manifest"], pool["shards"], tmp_path / f"mixed{i}", pool=POOL,
                         samples_per_shard=10, shuffle_buffer=8, seed=5) for i in range(2)]
    assert mixed[0].version_id == mixed[1].version_id != exp.version_id
    shuffled = _samples(mixed[0].version_dir, mixed[0].shards)
    assert sorted(s["key"] for s in shuffled) == sorted(s["key"] for s in samples)
    assert [s["key"] for s in shuffled] != [s["key"] for s in samples]
    assert read_export(tmp_path / "export").version_id == exp.version_id


def test_export_refuses_a_plan_of_another_pool(pool, tmp_path):
    with pytest.raises(StalePlanError, match="export"):
        export_plan(pool["plan"], pool["manifest"], pool["shards"], tmp_path / "export", pool="another-pool")
    assert not (tmp_path / "export" / "CURRENT").exists()


# Records every sample open_clip_train's webdataset pipeline lets through to decoding and batching
# (its ``filter_no_caption_or_no_image`` is looked up when the pipeline is built), then runs its main.
RECORDING_MAIN = """
import json, sys
import open_clip_train.data as data
log = open(sys.argv[1], "a")
_keep = data.filter_no_caption_or_no_image
def recording(sample):
    keep = _keep(sample)
    if keep:
        log.write(json.dumps({"key": sample["__key__"], "url": sample["__url__"]}) + "\\n")
        log.flush()
    return keep
data.filter_no_caption_or_no_image = recording
from open_clip_train.main import main
main(sys.argv[2:])
"""


def _sub_plan(pool, directory: Path, size: int) -> tuple[Path, Counter]:
    """A plan of ``size`` copies on the fixture's pool: distinct positions, every third one twice."""
    mult = []
    while sum(mult) < size:
        mult.append(2 if len(mult) % 3 == 2 and sum(mult) + 2 <= size else 1)
    indices = np.arange(len(mult), dtype=np.uint32) * (35 // len(mult))
    plan = Plan(indices, np.asarray(mult, np.uint16), np.array([35]), np.array([float(size)]), np.array([size]),
                {"recipe": "test.s0", "epoch": 1, "strategy": "hand"})
    return write_plan(directory, plan, pool_version=POOL), Counter(
        {pool["ids"][int(i)]: int(k) for i, k in zip(indices, mult)})


def _train_with_open_clip(exp, tmp_path: Path) -> tuple[list[tuple[str, str]], list[dict], str, float]:
    """Run the recorded command as printed (its batch, samples, workers, model folder, lr, warm-up,
    seed), with CPU, one epoch and logging: (the "Train Epoch" progress, the samples its pipeline
    let through to decoding and batching, the log, seconds). A hang fails at the timeout."""
    argv = shlex.split(exp.command)
    assert argv[:3] == ["python", "-m", "open_clip_train.main"]
    (tmp_path / "recording_main.py").write_text(RECORDING_MAIN)
    seen = tmp_path / "seen.jsonl"
    seen.touch()
    args = argv[3:] + ["--device", "cpu", "--precision", "fp32", "--epochs", "1", "--log-every-n-steps", "1",
                       "--report-to", "", "--save-frequency", "0", "--zeroshot-frequency", "0",
                       "--logs", str(tmp_path / "logs"), "--name", "export-run"]
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    run = subprocess.run([sys.executable, str(tmp_path / "recording_main.py"), str(seen), *args],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    elapsed = time.monotonic() - start
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    steps = re.findall(r"Train Epoch: 0 \[\s*(\d+)/(\d+)", log)
    return steps, [json.loads(line) for line in seen.read_text().splitlines()], log, elapsed


@pytest.mark.parametrize("size, batch, samples_per_shard, expect", [
    (5, 8, 4, {"batch_size": 5, "steps": 1, "left_out": 0}),  # smaller than a batch: one batch of the plan
    (12, 8, 6, {"batch_size": 6, "steps": 2, "left_out": 0, "workers": 2}),  # not a multiple: 6 divides it;
    # 2 shards of 6: one per worker
    (13, 8, 5, {"batch_size": 8, "steps": 1, "left_out": 5}),  # prime: whole batches, 5 left out, none repeated
    (32, 8, 10, {"batch_size": 8, "steps": 4, "left_out": 0}),  # a multiple; shards of 10, 10, 10, 2: one worker
])
def test_open_clip_train_reads_the_plan_as_the_manifest_says(pool, tmp_path, size, batch, samples_per_shard, expect):
    """The real open_clip_train, run with the printed command, reads every planned copy once per
    epoch (or, where whole batches make that impossible, leaves out exactly what the manifest
    says and repeats nothing), and a plan smaller than the batch does not hang."""
    from dynamics_assets.core.train.settings import TrainSettings

    plan_dir, planned = (pool["plan"], _expected(pool)) if size == 32 else _sub_plan(pool, tmp_path / "plan", size)
    settings = TrainSettings(batch_size=batch, lr=1e-4, n_epochs=1, seed=3)
    exp = export_plan(plan_dir, pool["manifest"], pool["shards"], tmp_path / "export", pool=POOL,
                      samples_per_shard=samples_per_shard, shuffle_buffer=0, workers=2, settings=settings)
    reading = json.loads((exp.version_dir / "manifest.json").read_text())["open_clip_reading"]
    assert reading == exp.reading
    assert (reading["batch_size"], reading["steps_per_epoch"], reading["left_out"], reading["repeated"]) == \
        (expect["batch_size"], expect["steps"], expect["left_out"], 0)
    assert reading["workers"] == expect.get("workers", 1) and reading["trained_batch_size"] == batch
    assert f"--batch-size {expect['batch_size']} " in exp.command and " --lr 0.0001 " in exp.command
    assert f"--train-num-samples {size - expect['left_out']} " in exp.command and "--seed 3" in exp.command
    steps, consumed, log, elapsed = _train_with_open_clip(exp, tmp_path)
    trained = size - expect["left_out"]
    assert steps == [(str(expect["batch_size"] * (i + 1)), str(trained)) for i in range(expect["steps"])], log[-3000:]
    # trained: the log's steps × batch; read: the samples its pipeline decoded
    assert trained == reading["trained_per_epoch"] == expect["steps"] * expect["batch_size"]
    keys = Counter(c["key"] for c in consumed)
    assert max(keys.values()) == 1, "nothing read twice"
    by_sample = Counter(k.rsplit("_", 1)[0] for k in keys)
    if expect["left_out"] == 0:
        assert len(consumed) == trained and by_sample == planned, "every planned copy exactly once"
    else:  # webdataset's batcher pulls one sample past the last whole batch (decoded, never trained)
        assert len(consumed) in (trained, trained + 1) and not by_sample - planned
    assert {Path(c["url"]).name for c in consumed} <= set(exp.shards)
    print(f"open_clip_train, plan of {size} at trained batch {batch}: {len(steps)} step(s) of "
          f"{expect['batch_size']}, {len(consumed)} samples read, {expect['left_out']} left out, {elapsed:.1f} s")


def test_a_plan_of_one_sample_is_refused_with_the_reason(pool, tmp_path):
    plan_dir, _ = _sub_plan(pool, tmp_path / "plan", 1)
    with pytest.raises(ValueError, match=r"holds 1 sample\(s\).*at least 2.*loops for ever"):
        export_plan(plan_dir, pool["manifest"], pool["shards"], tmp_path / "export", pool=POOL)
    assert not (tmp_path / "export" / "CURRENT").exists()


def test_webdataset_export_asset(pool, tmp_path):
    """The Dagster asset (invoked directly on one recipe × epoch partition) exports the plan it is given."""
    import dagster as dg

    from dynamics_assets.core.model.spec import EncoderSpec
    from dynamics_assets.core.records import PlanRecord, PoolClusters
    from dynamics_assets.defs.experiments import EXPERIMENTS
    from dynamics_assets.defs.export.assets import ExportConfig, webdataset_export
    from dynamics_assets.defs.resources import StorageResource

    recipe = EXPERIMENTS.default_keys[0]
    plan = PlanRecord(plan_dir=str(pool["plan"]), recipe=recipe, epoch=1, realised=32, pool_version=POOL)
    clusters = PoolClusters(clusters_dir=POOL, k=1, n=35, pool_version=POOL, manifest_dir=str(pool["manifest"]),
                            shards_dir=str(pool["shards"]), embeddings_dir="", encoder=EncoderSpec("dynamics-tiny-32"))
    context = dg.build_asset_context(partition_key=dg.MultiPartitionKey({"recipe": recipe, "epoch": "epoch-001"}))
    record = webdataset_export(context, config=ExportConfig(samples_per_shard=16), sample_plan=plan,
                               clusters=clusters, storage=StorageResource(root=str(tmp_path / "data")))
    assert (record.samples, record.distinct, record.shards, record.epoch) == (32, 21, 2, 1)
    export_dir = Path(record.export_dir)
    assert export_dir.is_relative_to(tmp_path / "data" / "artifacts" / "webdataset_export" / recipe / "epoch-001")
    assert record.command.startswith('python -m open_clip_train.main --dataset-type webdataset --train-data '
                                     f'"{export_dir}/{{00000..00001}}.tar" --train-num-samples 32')
    meta = json.loads((export_dir / "manifest.json").read_text())
    assert meta["order"] == {"kind": "seeded buffer shuffle of pool order", "buffer": 1000,
                             "seed": EXPERIMENTS.recipes[recipe].seed * 1000 + 1}
