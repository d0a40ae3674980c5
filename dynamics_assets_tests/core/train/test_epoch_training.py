"""One epoch on one plan: exact plan consumption, chaining, resume after an interrupt, DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from dynamics_assets.core.io.versions import Artefact, StalePlanError, version_info
from dynamics_assets.core.train.epoch import EpochJob, checkpoint_file, plan_share, run_epoch
from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.model.clip import read_checkpoint
from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, write_plan
from dynamics_assets.core.ingest.synthetic import generate

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("epoch")
    ds = generate(tmp / "raw", pairs=360, samples_per_shard=120, eval_per_concept=1, seed=5)
    summary = build_manifest(ds.shards, tmp / "manifest")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, summary.ok).astype(np.int32)
    plans = {}
    for epoch in (1, 2):
        plan = DynamicsSampler(0.5, alpha=0.2, mode="upsample").draw(ClusterPool.from_array(ids, 6), epoch=epoch, seed=0)
        plans[epoch] = write_plan(tmp / f"plan-{epoch}", plan, pool_version="test-pool")
    return tmp, ds, plans


def job(tmp, ds, plans, epoch=1, **kw) -> EpochJob:
    return EpochJob(plan_dir=str(plans[epoch]), manifest_dir=str(tmp / "manifest"), shards_dir=str(ds.out_dir / "shards"),
                    out_checkpoint=str(tmp / kw.pop("name", "ck") / f"epoch-{epoch}"), epoch=epoch, n_epochs=2,
                    batch_size=32, buffer_size=64, checkpoint_every_steps=1, device="cpu", **{"pool_version": "test-pool", **kw})


def test_plan_share_is_disjoint_and_complete():
    idx, cnt = np.arange(10, dtype=np.uint32) * 3, np.arange(1, 11, dtype=np.uint16)
    shares = [plan_share(idx, cnt, r, 3) for r in range(3)]
    joined = np.concatenate([s[0] for s in shares])
    assert sorted(joined.tolist()) == idx.tolist()
    assert sum(int(s[1].sum()) for s in shares) == int(cnt.sum())


def test_epoch_trains_on_the_plan_and_chains(pool):
    tmp, ds, plans = pool
    steps = []
    m1 = run_epoch(job(tmp, ds, plans, 1), on_step=lambda s, m: steps.append(s))
    plan_size = int(np.load(plans[1] / "multiplicity.npy").sum())
    assert m1["steps"] == -(-plan_size // 32) == len(steps), "full batches, then a smaller last one"
    assert m1["samples_seen"] == plan_size, "the whole plan is trained"
    assert m1["checkpoint"] == str(checkpoint_file(tmp / "ck" / "epoch-1"))  # in the committed version
    ck1 = read_checkpoint(m1["checkpoint"])
    assert ck1["optimizer"] is not None and ck1["samples_seen"] == m1["samples_seen"]
    m2 = run_epoch(replace(job(tmp, ds, plans, 2), previous_checkpoint=str(tmp / "ck" / "epoch-1")))
    assert m2["global_step"] == m1["global_step"] + m2["steps"], "the schedule continues"
    assert m2["samples_seen"] == m1["samples_seen"] + m2["epoch_samples"]
    model, _, _ = open_clip.create_model_and_transforms("dynamics-tiny-32", pretrained=m2["checkpoint"])
    sd = read_checkpoint(m2["checkpoint"])["state_dict"]
    assert version_info(m2["version_dir"])["refs"]["previous"]["id"] == m1["version_id"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sd.items())


def test_interrupted_epoch_resumes_to_the_same_weights(pool):
    tmp, ds, plans = pool
    run_epoch(job(tmp, ds, plans, 1, name="straight"))

    class Crash(Exception):
        pass

    def crash_at_3(step, _):
        if step == 3:
            raise Crash

    interrupted = job(tmp, ds, plans, 1, name="resumed")
    with pytest.raises(Crash):
        run_epoch(interrupted, on_step=crash_at_3)
    root = Path(interrupted.out_checkpoint)
    assert Artefact(root).current() is None  # nothing committed: readers see no checkpoint
    assert list((root / ".staging").glob("*/step.pt"))  # the step checkpoint waits in the staging dir
    metrics = run_epoch(interrupted)
    assert metrics["resumed_at_step"] == 3
    a = read_checkpoint(checkpoint_file(tmp / "straight" / "epoch-1"))["state_dict"]
    b = read_checkpoint(checkpoint_file(tmp / "resumed" / "epoch-1"))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((root / ".staging").iterdir())  # the staging dir became the version


def test_worker_processes_train_the_same_weights_and_resume(pool):
    """Decoding in 2 DataLoader workers trains exactly what decoding in the process trains, and an
    interrupted epoch with workers resumes to the same weights."""
    tmp, ds, plans = pool
    run_epoch(job(tmp, ds, plans, 1, name="w0"))

    class Crash(Exception):
        pass

    def crash_at_2(step, _):
        if step == 2:
            raise Crash

    with_workers = job(tmp, ds, plans, 1, name="w2", num_workers=2)
    with pytest.raises(Crash):
        run_epoch(with_workers, on_step=crash_at_2)
    metrics = run_epoch(with_workers)
    assert metrics["resumed_at_step"] == 2
    a = read_checkpoint(checkpoint_file(tmp / "w0" / "epoch-1"))["state_dict"]
    b = read_checkpoint(checkpoint_file(tmp / "w2" / "epoch-1"))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="num_workers"):
        job(tmp, ds, plans, 1, num_workers=-1)


def test_a_plan_of_another_pool_version_is_refused(pool):
    tmp, ds, plans = pool
    with pytest.raises(StalePlanError, match=r"drawn on pool version test-pool.*reads pool version 0123456789abcdef"):
        run_epoch(job(tmp, ds, plans, 1, name="stale", pool_version="0123456789abcdef"))
    assert not (tmp / "stale").exists()


def test_ddp_two_processes_split_the_plan(pool, tmp_path):
    tmp, ds, plans = pool
    j = job(tmp, ds, plans, 1, name="ddp")
    (tmp_path / "job.json").write_text(json.dumps(asdict(j)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "dynamics_assets.core.train.epoch", str(tmp_path / "job.json"),
                           str(tmp_path / "metrics.json")], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["ranks_in_sync"], "DDP kept both ranks' weights identical"
    plan_size = int(np.load(plans[1] / "multiplicity.npy").sum())
    assert metrics["epoch_samples"] == metrics["steps"] * 32 * 2 <= plan_size
    assert metrics["steps"] >= plan_size // 64 - 1
    assert Path(metrics["checkpoint"]).is_file() and Artefact(j.out_checkpoint).current() is not None


# ----------------------------------------------------------------------------- reproducible versions, reuse,
# and every checkpoint version an open_clip model folder


@pytest.fixture(scope="module")
def twice(pool):
    """Epoch 1 trained twice, into two artefact roots, from the same plan, seed and settings."""
    tmp, ds, plans = pool
    return [run_epoch(job(tmp, ds, plans, 1, name=f"twice-{i}")) for i in range(2)]


def test_the_same_plan_seed_and_settings_give_the_same_version(twice):
    a, b = twice
    assert a["version_id"] == b["version_id"], "wall-clock seconds or paths leaked into checkpoint.pt"
    assert Path(a["checkpoint"]).read_bytes() == Path(b["checkpoint"]).read_bytes()
    extra = read_checkpoint(a["checkpoint"])["extra"]
    assert not {"seconds", "device_seconds", "job", "device", "resumed_at_step"} & set(extra)
    assert extra["settings"]["batch_size"] == 32 and extra["samples_seen"] == a["samples_seen"]
    # the timings and host facts live beside the weights, in _version.json, outside the id
    meta = version_info(a["version_dir"])["meta"]
    assert meta["metrics"]["device_seconds"] > 0 and meta["host"]["hostname"]
    assert a["device_seconds"] == meta["metrics"]["device_seconds"] and not a["reused"]


def test_rematerialising_the_same_epoch_reuses_without_training(pool, twice, monkeypatch):
    from dynamics_assets.core.train import epoch as epoch_module

    tmp, ds, plans = pool
    first = twice[0]
    monkeypatch.setattr(epoch_module, "_run_epoch", lambda *a, **k: pytest.fail("retrained a committed checkpoint"))
    again = run_epoch(job(tmp, ds, plans, 1, name="twice-0"))
    assert again["reused"] and again["version_id"] == first["version_id"]
    assert again["device_seconds"] == first["device_seconds"], "the compute that made it, for the comparison"
    assert (again["samples_seen"], again["final_loss"]) == (first["samples_seen"], first["final_loss"])
    # other inputs are another checkpoint: a new seed or learning rate trains (here: refused by the stub)
    with pytest.raises(pytest.fail.Exception):
        run_epoch(job(tmp, ds, plans, 1, name="twice-0", lr=2e-3))
    # a damaged version is not reused
    version = Path(first["version_dir"])
    ckpt = version / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.chmod(0o644)
    ckpt.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    try:
        with pytest.raises(pytest.fail.Exception):
            run_epoch(job(tmp, ds, plans, 1, name="twice-0"))
    finally:
        ckpt.write_bytes(data)


ZERO_SHOT_WITH_PLAIN_OPEN_CLIP = """
import json, sys
import numpy as np, open_clip, torch
from PIL import Image
folder, task = sys.argv[1], json.load(open(sys.argv[2]))
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
model.eval()
with torch.no_grad():
    classes = []
    for names in task["prompt_names"]:
        texts = [t.format(n) for n in names for t in task["templates"]]
        e = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)).float(), dim=-1)
        classes.append(torch.nn.functional.normalize(e.mean(0), dim=0))
    classes = torch.stack(classes)
    images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in task["images"]])
    feats = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
    pred = (feats @ classes.T).argmax(1).numpy()
print(json.dumps({"top1": float((pred == np.array(task["labels"])).mean()), "n": len(pred), "pred": pred.tolist()}))
"""


def test_every_checkpoint_version_is_an_open_clip_model_folder(pool, twice, tmp_path):
    """Plain open_clip (a subprocess importing no project code) loads the version as
    ``local-dir:<version>`` and its zero-shot top-1 on the labelled set equals the project's eval."""
    from dynamics_assets.core.evaluate.report import evaluate_model, load_eval_set
    from dynamics_assets.core.model.clip import load_encoder
    from dynamics_assets.core.model.spec import EncoderSpec

    tmp, ds, plans = pool
    first = twice[0]
    folder = Path(first["version_dir"])
    assert first["open_clip_model"] == f"local-dir:{folder}"
    assert {"open_clip_config.json", "open_clip_model.safetensors", "checkpoint.pt"} <= {p.name for p in folder.iterdir()}
    # the project's evaluation of checkpoint.pt
    encoder = load_encoder(EncoderSpec("dynamics-tiny-32", first["checkpoint"]))
    eval_set = load_eval_set(ds.eval_dir)
    ours = evaluate_model(encoder.model, encoder.preprocess, encoder.tokenizer, eval_set, progress=lambda *_: None)
    # the same labelled set as plain files
    images = []
    for i in range(len(eval_set)):
        images.append(str(tmp_path / f"{i}.png"))
        eval_set.image(i).save(images[-1])
    task = {"images": images, "labels": eval_set.labels.tolist(), "prompt_names": eval_set.prompt_names,
            "templates": list(eval_set.templates)}
    (tmp_path / "task.json").write_text(json.dumps(task))
    (tmp_path / "zs.py").write_text(ZERO_SHOT_WITH_PLAIN_OPEN_CLIP)
    run = subprocess.run([sys.executable, str(tmp_path / "zs.py"), str(folder), str(tmp_path / "task.json")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    plain = json.loads(run.stdout.strip().splitlines()[-1])
    assert plain["n"] == len(eval_set) > 0
    assert plain["top1"] == ours.metrics["zero_shot/top1"]
    # image by image: the same predicted class as the project's embeddings give
    from dynamics_assets.core.evaluate.report import class_embeddings, embed_eval_images

    classes = class_embeddings(encoder.model, encoder.tokenizer, eval_set.prompt_names, eval_set.templates, "cpu")
    images_emb = embed_eval_images(encoder.model, encoder.preprocess, eval_set, "cpu")
    assert plain["pred"] == (images_emb @ classes.T).argmax(1).tolist()
    print(f"zero-shot top-1 on {plain['n']} images: plain open_clip local-dir {plain['top1']:.4f}, "
          f"project eval {ours.metrics['zero_shot/top1']:.4f}")
