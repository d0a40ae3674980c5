"""Benchmark: the plan-driven training loader against reading the same samples without a plan,
and decoding in DataLoader worker processes against decoding in the training process.

The baseline is what a curation pipeline without plans would do: physically reshard the planned
samples into their own webdataset shards (as DataComp's resharder writes a subset), then read
those shards start to finish. The plan-driven loader instead reads the planned samples straight
from the original pool shards through the plan's sorted indices. Both feed the same shuffle
buffer and the same collate (image decode + open_clip preprocess + tokenizer), so the ratio is
the cost of the plan indirection.

Both loaders run through ``loader.batch_loader`` with 0 and with ``--workers`` DataLoader workers
(the same batches in the same order either way); all four are timed interleaved in one run.

Targets (shared/notes/performance.md): plan-driven ≤ 5% slower than resharded; ≥ 1.6× samples/s
with 2 workers against 0 on 2 cores.

    .venv/bin/python bench/bench_loader.py [--pairs 20000] [--budget 0.5] [--repeats 3] [--workers 2]
"""
from __future__ import annotations

import argparse
import functools
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import open_clip  # noqa: E402

from dynamics_assets.core.ingest.manifest import build_manifest  # noqa: E402
from dynamics_assets.core.model.clip import create_model  # noqa: E402
from dynamics_assets.core.train.loader import PairBatches, batch_loader  # noqa: E402
from dynamics_assets.core.ingest.pool import collate, iter_pool_pairs  # noqa: E402
from dynamics_assets.core.sample import ClusterPool, DynamicsSampler  # noqa: E402
from dynamics_assets.core.ingest.synthetic import generate  # noqa: E402


def reshard(manifest_dir: Path, shards_dir: Path, indices: np.ndarray, out: Path, per_shard: int) -> list[Path]:
    """Write the selected pairs into new shards, the encoded image bytes copied as they are."""
    out.mkdir(parents=True, exist_ok=True)
    paths, tar, n = [], None, 0
    for pair in iter_pool_pairs(manifest_dir, shards_dir, indices=indices):
        if n % per_shard == 0:
            if tar:
                tar.close()
            paths.append(out / f"subset-{len(paths):05d}.tar")
            tar = tarfile.open(paths[-1], "w")
        key = f"{pair.sample_index:09d}"
        encoded = pair.image.fp.getvalue()  # Pair.image is opened lazily on the original bytes
        for name, data in ((f"{key}.png", encoded), (f"{key}.txt", (pair.caption or "").encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        n += 1
    if tar:
        tar.close()
    return paths


def timed_pass(batches: PairBatches, preprocess, tokenizer, workers: int) -> tuple[float, int]:
    t, n = time.perf_counter(), 0
    for images, _ in batch_loader(batches, functools.partial(collate, preprocess=preprocess, tokenizer=tokenizer),
                                  num_workers=workers):
        n += len(images)
    return time.perf_counter() - t, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = generate(tmp / "raw", pairs=args.pairs, seed=0)
        summary = build_manifest(ds.shards, tmp / "manifest")
        ids = np.random.default_rng(0).integers(0, 100, summary.ok).astype(np.int32)
        plan = DynamicsSampler(args.budget, alpha=0.2).draw(ClusterPool.from_array(ids, 100), epoch=1, seed=0)
        sub = reshard(tmp / "manifest", ds.out_dir / "shards", plan.indices, tmp / "subset", 2000)
        sub_manifest = build_manifest(sub, tmp / "subset_manifest")
        assert sub_manifest.ok == len(plan.indices), (sub_manifest.ok, len(plan.indices))
        _, _, preprocess = create_model("dynamics-tiny-32")
        tokenizer = open_clip.get_tokenizer("dynamics-tiny-32")
        planned = PairBatches(tmp / "manifest", ds.out_dir / "shards", 0, args.batch_size,
                              indices=plan.indices, counts=plan.multiplicity)
        baseline = PairBatches(tmp / "subset_manifest", tmp / "subset", 0, args.batch_size)
        loaders = {"plan": planned, "resharded": baseline}
        times: dict[tuple[str, int], list[float]] = {(k, w): [] for k in loaders for w in (0, args.workers)}
        sizes = {}
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits all alike
            for (name, workers), ts in times.items():
                t, sizes[name] = timed_pass(loaders[name], preprocess, tokenizer, workers)
                ts.append(t)
        rate = {key: sizes[key[0]] / min(ts) for key, ts in times.items()}
        print(f"pool {summary.ok:,} ok pairs; plan {plan.size:,} samples (DynamiCS α=0.2, {args.budget:.0%}); "
              f"batch {args.batch_size}; {os.cpu_count()} CPUs; best of {args.repeats}")
        for (name, workers), r in rate.items():
            print(f"{name:>10} loader, {workers} workers: {r:8.0f} samples/s  ({min(times[name, workers]):.2f} s)")
        for workers in (0, args.workers):
            ratio = rate["plan", workers] / rate["resharded", workers]
            print(f"plan-driven / resharded, {workers} workers = {ratio:.3f}  (cost {100 * (1 - ratio):+.1f}%; target ≤ 5%)")
        for name in loaders:
            print(f"{name}: {args.workers} workers / 0 workers = {rate[name, args.workers] / rate[name, 0]:.2f}×  "
                  "(target ≥ 1.6× with 2 workers on 2 cores)")


if __name__ == "__main__":
    main()
