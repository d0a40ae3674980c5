"""Pool streaming (pairs.py) and the CLIP training loop (training.py) on tiny tar shards."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageDraw

from dynamics_assets.core.ingest.manifest import METADATA_KEY
from dynamics_assets.core.model.clip import create_model, read_checkpoint
from dynamics_assets.core.train.loader import PairBatches, ShuffleBatcher, batch_loader, batch_stream
from dynamics_assets.core.ingest.pool import collate, iter_pool_pairs
from dynamics_assets.core.train.loop import TrainConfig, load_train_state, train_reference_model, train_steps

MODEL = "dynamics-tiny-32"
COLOURS = {"red": (230, 30, 30), "green": (30, 210, 40), "blue": (40, 60, 235), "yellow": (235, 225, 30)}
SHAPES = ("circle", "square")


def _png(colour: str, shape: str, rng: np.random.Generator) -> bytes:
    image = Image.new("RGB", (32, 32), (20, 20, 20))
    x, y = rng.integers(2, 10, size=2)
    size = int(rng.integers(16, 21))
    box = (int(x), int(y), int(x) + size, int(y) + size)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_pool(root: Path, shard_sizes: list[int], *, quarantine_every: int = 0, seed: int = 0):
    """Tar shards of coloured shapes plus their manifests; returns (manifest_dir, shards_dir, ok ids
    in pool order). Manifest rows are written in reverse ``row`` order; every ``quarantine_every``-th
    sample is quarantined."""
    rng = np.random.default_rng(seed)
    manifest_dir, shards_dir = root / "manifest", root / "shards"
    manifest_dir.mkdir(parents=True)
    shards_dir.mkdir(parents=True)
    ok_ids, counter = [], 0
    for s, size in enumerate(shard_sizes):
        name, rows = f"shard-{s:03d}.tar", []
        with tarfile.open(shards_dir / name, "w") as tar:
            for r in range(size):
                key = f"{s:03d}{r:05d}"
                colour, shape = list(COLOURS)[counter % 4], SHAPES[(counter // 4) % 2]
                caption = f"a {colour} {shape}"
                _add(tar, f"{key}.png", _png(colour, shape, rng))
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps({"key": key}).encode())
                ok = not quarantine_every or (counter + 1) % quarantine_every
                sample_id = hashlib.md5(key.encode()).hexdigest()
                rows.append({"sample_id": sample_id, "shard": name, "key": key, "row": r,
                             "image_member": f"{key}.png", "caption": caption,
                             "status": "ok" if ok else "quarantined"})
                ok_ids += [sample_id] if ok else []
                counter += 1
        schema = pa.schema([("sample_id", pa.string()), ("shard", pa.string()), ("key", pa.string()),
                            ("row", pa.int32()), ("image_member", pa.string()), ("caption", pa.string()),
                            ("status", pa.string())])
        table = pa.Table.from_pylist(rows[::-1], schema=schema)
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps({"shard": name})})
        pq.write_table(table, manifest_dir / f"shard-{s:03d}.parquet")
    return manifest_dir, shards_dir, ok_ids


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return write_pool(tmp_path_factory.mktemp("pool"), [40, 0, 30, 50], quarantine_every=7)


# ----------------------------------------------------------------------------- pairs


def test_iter_pool_pairs_yields_ok_pairs_in_pool_order(pool):
    manifest_dir, shards_dir, ok_ids = pool
    pairs = list(iter_pool_pairs(manifest_dir, shards_dir))
    assert [p.sample_id for p in pairs] == ok_ids
    assert [p.sample_index for p in pairs] == list(range(len(ok_ids)))
    assert pairs[0].image.size == (32, 32) and pairs[0].caption.startswith("a ")


def test_iter_pool_pairs_selection_with_multiplicity_skips_other_shards(pool, tmp_path):
    manifest_dir, shards_dir, ok_ids = pool
    n0 = 40 - 40 // 7  # ok pairs of shard 0
    indices = np.array([n0 + 1, n0 + 5, n0 + 20, len(ok_ids) - 1])
    counts = np.array([2, 0, 1, 3])
    # only shards 2 and 3 are needed: a pool without shard 0's tar must still serve them
    partial = tmp_path / "shards"
    partial.mkdir()
    for name in ("shard-002.tar", "shard-003.tar"):
        (partial / name).symlink_to(shards_dir / name)
    pairs = iter_pool_pairs(manifest_dir, partial, indices=indices, counts=counts)
    got = [(p.sample_index, p.sample_id) for p in pairs]
    expected = [(int(i), ok_ids[i]) for i, c in zip(indices, counts) for _ in range(c)]
    assert got == expected
    with pytest.raises(FileNotFoundError):  # shard 0 is really needed for index 0
        list(iter_pool_pairs(manifest_dir, partial, indices=np.array([0])))
    tail = list(iter_pool_pairs(manifest_dir, partial, indices=indices, counts=counts, start=2))
    assert [(p.sample_index, p.sample_id) for p in tail] == expected[2:]


def test_iter_pool_pairs_rejects_unsorted_or_out_of_range_indices(pool):
    manifest_dir, shards_dir, ok_ids = pool
    for bad in (np.array([3, 1]), np.array([len(ok_ids)]), np.array([-1])):
        with pytest.raises(ValueError, match="sorted"):
            list(iter_pool_pairs(manifest_dir, shards_dir, indices=bad))


def test_batches_are_seeded_have_distinct_ids_and_resume_without_replaying_images(pool):
    manifest_dir, shards_dir, ok_ids = pool
    indices = np.arange(0, len(ok_ids), 2)
    counts = np.full(indices.shape, 3)  # every sample three times: a batch must still hold distinct ids
    batches = PairBatches(manifest_dir, shards_dir, seed=(5, 1), batch_size=16, buffer_size=24,
                          indices=indices, counts=counts)
    full = [[p.sample_index for p in b] for b in batches]
    assert len(full) == batches.num_batches() >= 3 * len(indices) // 16 - 1  # the tail may lose repeats
    assert all(len(set(b)) == 16 for b in full)
    seen = Counter(i for b in full for i in b)
    assert set(seen) <= set(indices.tolist()) and max(seen.values()) <= 3
    assert full == [[p.sample_index for p in b] for b in batches]  # same seed, same batches
    other = PairBatches(manifest_dir, shards_dir, seed=(5, 2), batch_size=16, buffer_size=24,
                        indices=indices, counts=counts)
    assert full != [[p.sample_index for p in b] for b in other]
    for skip in (1, 4, len(full) - 1):
        resumed = [[p.sample_index for p in b] for b in batches.batches(skip=skip)]
        assert resumed == full[skip:]
    with pytest.raises(ValueError, match="cannot skip"):
        list(batches.batches(skip=len(full) + 1))


def _ids_and_pid(pairs):
    import os

    return [p.sample_id for p in pairs], os.getpid()


def test_worker_processes_give_the_same_batches_in_the_same_order(pool):
    manifest_dir, shards_dir, ok_ids = pool
    indices = np.arange(0, len(ok_ids), 2)
    batches = PairBatches(manifest_dir, shards_dir, seed=(7, 1), batch_size=8, buffer_size=16,
                          indices=indices, counts=np.full(indices.shape, 2))
    expected = [[p.sample_id for p in b] for b in batches]
    assert len(expected) >= 6
    for skip, stop in ((0, None), (2, len(expected) - 1)):
        by_workers = {}
        for workers in (0, 1, 2, 3):
            out = list(batch_loader(batches, _ids_and_pid, skip=skip, stop=stop, num_workers=workers))
            by_workers[workers] = [ids for ids, _ in out]
            pids = {pid for _, pid in out}
            assert len(pids) == max(1, workers), f"{workers} workers decoded in {len(pids)} processes"
        assert all(v == expected[skip:stop] for v in by_workers.values()), "order independent of num_workers"
    _, preprocess, tokenizer = _fresh()
    tensors = [list(batch_loader(batches, lambda b: collate(b, preprocess, tokenizer), num_workers=w)) for w in (0, 2)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*tensors))


def test_shuffle_batcher_defers_repeated_ids_to_the_next_batch():
    class Item:
        def __init__(self, sample_id: str):
            self.sample_id = sample_id

    items = [Item(s) for s in "aaaabbbbcccc"]
    batches = list(batch_stream(ShuffleBatcher(0, batch_size=3, buffer_size=4), items))
    assert len(batches) == 4
    assert all(sorted(x.sample_id for x in b) == ["a", "b", "c"] for b in batches)


# ----------------------------------------------------------------------------- training


def _tensor_batches(batches, preprocess, tokenizer):
    return (collate(b, preprocess, tokenizer) for b in batches)


def _fresh(seed: int = 0):
    model, _, preprocess = create_model(MODEL, seed=seed)
    return model, preprocess, open_clip.get_tokenizer(MODEL)


def test_loss_decreases_on_learnable_pairs(pool):
    manifest_dir, shards_dir, _ = pool
    model, preprocess, tokenizer = _fresh()
    batches = PairBatches(manifest_dir, shards_dir, seed=0, batch_size=16, buffer_size=32)
    stream = (b for epoch in range(30) for b in batches.batches())
    losses = []
    cfg = TrainConfig(lr=2e-3, warmup_steps=3, total_steps=30, batch_size=16, weight_decay=0.1)
    train_steps(model, islice(_tensor_batches(stream, preprocess, tokenizer), 30), cfg,
                on_step=lambda step, m: losses.append(m["loss"]))
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])


def test_resume_from_step_checkpoint_is_bit_identical(pool, tmp_path):
    manifest_dir, shards_dir, _ = pool
    batches = PairBatches(manifest_dir, shards_dir, seed=3, batch_size=16, buffer_size=32)
    cfg = TrainConfig(lr=1e-3, weight_decay=0.1, warmup_steps=2, total_steps=6, batch_size=16, checkpoint_every_steps=3)

    straight, preprocess, tokenizer = _fresh()
    state = train_steps(straight, islice(_tensor_batches(batches, preprocess, tokenizer), 6), cfg)
    assert state.step == 6 and state.samples_seen == 96

    crashed, _, _ = _fresh()
    ckpt = tmp_path / "step.pt"

    def crash(step, metrics):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_steps(crashed, _tensor_batches(batches, preprocess, tokenizer), cfg,
                    step_checkpoint_path=ckpt, model_name=MODEL, on_step=crash)

    resumed, _, _ = _fresh(seed=99)  # different init: everything must come from the checkpoint
    state = load_train_state(ckpt, resumed)
    assert state.step == 3 and state.samples_seen == 48
    rest = islice(_tensor_batches(batches.batches(skip=state.step), preprocess, tokenizer), 3)
    state = train_steps(resumed, rest, cfg, state=state)
    assert state.step == 6
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reference_model_resumes_after_a_crash_and_is_open_clip_loadable(tmp_path):
    manifest_dir, shards_dir, _ = write_pool(tmp_path, [40, 30])
    kwargs = dict(epochs=2, batch_size=16, buffer_size=24, seed=1, checkpoint_every_steps=3)

    straight = train_reference_model(manifest_dir, shards_dir, tmp_path / "straight.pt", **kwargs)
    assert straight["steps"] == 8 and straight["samples_seen"] == 128
    assert np.isfinite(straight["final_loss"])

    out = tmp_path / "resumed.pt"

    def crash(step, metrics):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # decoded in 2 workers: the same batches, the same weights
        train_reference_model(manifest_dir, shards_dir, out, on_step=crash, num_workers=2, **kwargs)
    assert not out.exists() and (tmp_path / "resumed.step.pt").exists()
    resumed = train_reference_model(manifest_dir, shards_dir, out, num_workers=2, **kwargs)
    assert resumed["resumed_from_step"] == 6 and resumed["steps"] == 8
    assert not (tmp_path / "resumed.step.pt").exists()

    a = read_checkpoint(tmp_path / "straight.pt")["state_dict"]
    b = read_checkpoint(out)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    model, _, _ = open_clip.create_model_and_transforms(MODEL, pretrained=str(out))
    assert all(torch.equal(v, b[k]) for k, v in model.state_dict().items())


def test_train_config_validates():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(lr=1e-3, weight_decay=0.1, precision="fp8", total_steps=2)
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(lr=1e-3, weight_decay=0.1, warmup_steps=5, total_steps=5)
    with pytest.raises(TypeError, match="lr.*weight_decay"):  # no unused defaults: every caller derives them
        TrainConfig(total_steps=2)


def test_reference_model_hyper_parameters_are_the_training_settings(tmp_path):
    """The reference model trains with TrainSettings' values (no hard-coded second set): by default
    exactly the ones it always had (lr 1e-3, weight decay 0.1, warm-up ⌊S/10⌋, clip 1.0, step
    checkpoints every 20), the run record unchanged (so a default checkpoint keeps its bytes); a
    setting changed is used and recorded, so the default-trained checkpoint is not reused for it;
    an unknown one is refused."""
    from dynamics_assets.core.train.settings import TrainSettings

    manifest_dir, shards_dir, _ = write_pool(tmp_path, [40, 30])
    out = tmp_path / "ref.pt"
    first = train_reference_model(manifest_dir, shards_dir, out, epochs=1, batch_size=16, buffer_size=24)
    cfg = first["config"]
    assert (cfg["lr"], cfg["weight_decay"], cfg["grad_clip_norm"], cfg["checkpoint_every_steps"]) == (1e-3, 0.1, 1.0, 20)
    assert cfg["warmup_steps"] == cfg["total_steps"] // 10
    record = json.loads((tmp_path / "ref.pt.json").read_text())
    assert set(record["run"]) == {"model_name", "epochs", "batch_size", "seed", "lr", "buffer_size", "n_pairs",
                                  "total_steps"}
    settings = TrainSettings(weight_decay=0.3, warmup_fraction=0.5)
    other = train_reference_model(manifest_dir, shards_dir, out, settings=settings, epochs=1, batch_size=16,
                                  buffer_size=24)
    assert other["reused"] is False
    assert other["config"]["weight_decay"] == 0.3 and other["config"]["warmup_steps"] == other["config"]["total_steps"] // 2
    record = json.loads((tmp_path / "ref.pt.json").read_text())
    assert record["run"]["weight_decay"] == 0.3 and record["run"]["warmup_fraction"] == 0.5
    with pytest.raises(ValueError, match="train_reference_model: unknown training setting.*'momentum'"):
        train_reference_model(manifest_dir, shards_dir, out, epochs=1, momentum=0.9)


def test_reference_model_is_reused_on_the_same_pool_with_the_same_arguments_only(tmp_path):
    import shutil

    manifest_dir, shards_dir, _ = write_pool(tmp_path / "a", [40, 30])
    kwargs = dict(epochs=1, batch_size=16, buffer_size=24)
    out = tmp_path / "a" / "ref.pt"
    first = train_reference_model(manifest_dir, shards_dir, out, seed=1, **kwargs)
    assert first["reused"] is False and (tmp_path / "a" / "ref.pt.json").exists()
    stamp = out.stat().st_mtime_ns
    again = train_reference_model(manifest_dir, shards_dir, out, seed=1, **kwargs)
    assert again["reused"] is True and again["steps"] == first["steps"] and again["final_loss"] == first["final_loss"]
    assert out.stat().st_mtime_ns == stamp, "the checkpoint is not rewritten"
    assert train_reference_model(manifest_dir, shards_dir, out, seed=1, reuse=False, **kwargs)["reused"] is False
    assert train_reference_model(manifest_dir, shards_dir, out, seed=2, **kwargs)["reused"] is False, "other seed"
    with open(out, "ab") as f:  # a checkpoint that is not the one recorded
        f.write(b"\0")
    assert train_reference_model(manifest_dir, shards_dir, out, seed=2, **kwargs)["reused"] is False
    # Another pool (one more shard), with the first pool's checkpoint and record next to it.
    manifest_b, shards_b, _ = write_pool(tmp_path / "b", [40, 30, 20])
    for name in ("ref.pt", "ref.pt.json"):
        shutil.copy(tmp_path / "a" / name, tmp_path / "b" / name)
    assert train_reference_model(manifest_b, shards_b, tmp_path / "b" / "ref.pt", seed=2, **kwargs)["reused"] is False


def test_the_selection_reference_setting_is_checked_with_its_range_when_the_recipes_load(tmp_path):
    """training.reference: 'pool' | 'curated', only with online selection; refused when the
    experiments file loads, naming the file, the recipe and the range."""
    from dynamics_assets.core.train.settings import TrainSettings
    from dynamics_assets.defs.experiments import load_experiments

    assert TrainSettings().reference == "pool" and TrainSettings(selection="jest", reference="curated").reference == "curated"
    head = "default_recipe: a\nrecipes:\n  a: {sampler: {strategy: uniform, budget: 0.5}"
    (tmp_path / "ok.yaml").write_text(head + ", training: {selection: activeclip, reference: curated}}\n")
    assert load_experiments(tmp_path / "ok.yaml").recipes["a.s0"].training["reference"] == "curated"
    for training, message in (("{selection: jest, reference: raw}", r"reference must be one of \('pool', 'curated'\)"),
                              ("{reference: curated}", r"reference 'curated' .* needs selection \(jest or activeclip\)")):
        (tmp_path / "bad.yaml").write_text(head + f", training: {training}}}\n")
        with pytest.raises(ValueError, match=rf"bad.yaml: recipe 'a'.*{message}"):
            load_experiments(tmp_path / "bad.yaml")
