"""A pool whose manifest read image headers only (decode: header) holds images that do not
decode; the reference model — the first step that decodes every image — leaves them out of their
batches and records each one (sample id and reason), instead of crashing or dropping them silently."""
from __future__ import annotations

import json

import pytest

from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.ingest.pool import Pair, UndecodableImage, collate
from dynamics_assets.core.ingest.synthetic import generate
from dynamics_assets.core.model.clip import create_model
from dynamics_assets.core.train.loop import train_reference_model

MODEL = "dynamics-tiny-32"


def test_reference_model_skips_and_records_undecodable_images(tmp_path):
    ds = generate(tmp_path / "raw", pairs=400, seed=1, samples_per_shard=134, eval_per_concept=1)
    shards = sorted((ds.out_dir / "shards").glob("*.tar"))
    full = build_manifest(shards, tmp_path / "full")
    header = build_manifest(shards, tmp_path / "header", decode="header")
    let_through = full.by_reason["corrupt_image"] - header.by_reason.get("corrupt_image", 0)
    assert let_through >= 1, "the generator plants truncated images a header check accepts"

    out = tmp_path / "ref" / "reference.pt"
    out.parent.mkdir()
    metrics = train_reference_model(header.version_dir, ds.out_dir / "shards", out, model_name=MODEL,
                                    epochs=1, batch_size=64, device="cpu", reuse=False)
    assert metrics["undecodable_images"] == let_through
    records = [json.loads(line) for line in out.with_name(out.name + ".undecodable.jsonl").read_text().splitlines()]
    assert len({r["sample_id"] for r in records}) == let_through
    assert all("does not decode" in r["reason"] for r in records)
    # the full batches (the last partial one is dropped) lost exactly the recorded pairs
    assert metrics["samples_seen"] + let_through == metrics["steps"] * 64


def test_collate_raises_without_a_recorder_and_records_with_one():
    import io

    import numpy as np
    import open_clip
    from PIL import Image

    _, _, preprocess = create_model(MODEL, device="cpu", seed=0)
    tokenizer = open_clip.get_tokenizer(MODEL)

    def pair(i: int, truncate: bool) -> Pair:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        data = buf.getvalue()
        return Pair(sample_index=i, sample_id=f"s{i}", image=Image.open(io.BytesIO(data[:len(data) // 2] if truncate else data)),
                    caption="a red circle")

    with pytest.raises(UndecodableImage, match="s1.*does not decode"):
        collate([pair(0, False), pair(1, True)], preprocess, tokenizer)
    seen = []
    images, tokens = collate([pair(0, False), pair(1, True), pair(2, False)], preprocess, tokenizer,
                             on_undecodable=lambda p, reason: seen.append(p.sample_id))
    assert seen == ["s1"] and images.shape[0] == tokens.shape[0] == 2
