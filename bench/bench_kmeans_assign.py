"""Benchmark: spherical k-means training and streamed assignment over an on-disk fp16 embedding store.

Generates an embedding store of N unit rows (fp16, one directory per shard, written shard by
shard) in a temporary directory, trains ``train_kmeans`` on a sample, then assigns two pools in
fresh subprocesses so their peaks do not mix: the first N/10 rows and all N rows. Reports
assignment throughput (rows/s) and peak RSS (VmHWM) per size, and the peak RSS ratio N vs N/10
(target ~1.0: memory independent of N; absolute target < 2 GB at 10M x 512).

    .venv/bin/python bench/bench_kmeans_assign.py [--n 10000000 --dim 512 --k 1000]

Shards are column permutations of a few random unit blocks (a permutation keeps rows unit-norm), so
generation is I/O-bound; assignment cost does not depend on the data.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dynamics_assets.core.io.atomic import save_npy
from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.cluster.kmeans import assign, train_kmeans

BASE_BLOCKS = 4


def peak_rss_mb() -> float:
    """Peak resident set size (VmHWM) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def generate_store(root: Path, n: int, dim: int, shard_rows: int, seed: int) -> list[Path]:
    """Write ``ceil(n / shard_rows)`` shards of unit fp16 rows; return the shard directories."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(BASE_BLOCKS):
        x = rng.standard_normal((shard_rows, dim), dtype=np.float32)
        blocks.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
    shards = []
    for i, start in enumerate(range(0, n, shard_rows)):
        rows = min(shard_rows, n - start)
        shard = root / f"shard-{i:06d}"
        shard.mkdir(parents=True)
        emb = blocks[i % BASE_BLOCKS][:rows, rng.permutation(dim)]
        save_npy(shard / "image.npy", emb)
        save_npy(shard / "sample_id.npy", np.arange(start, start + rows).astype("S32"))
        shards.append(shard)
    return shards


def link_store(root: Path, shards: list[Path]) -> None:
    """A store made of symbolic links to existing shard directories."""
    root.mkdir(parents=True)
    for shard in shards:
        (root / shard.name).symlink_to(shard)


def run_worker(*args: str) -> dict:
    """Run this script's worker mode in a fresh interpreter; return its JSON report."""
    out = subprocess.run([sys.executable, __file__, "--worker", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker(argv: list[str]) -> None:
    """``train EMB CENTROIDS K SAMPLE NITER`` or ``assign EMB CENTROIDS OUT BATCH``; prints a JSON report."""
    mode, emb_dir, centroids_path, *rest = argv
    store = EmbeddingStore(emb_dir)
    baseline_mb = peak_rss_mb()
    if mode == "train":
        k, sample_size, niter = map(int, rest)
        t0 = time.perf_counter()
        save_npy(Path(centroids_path), train_kmeans(store, k, sample_size=sample_size, niter=niter, use_gpu=False))
        report = {"seconds": time.perf_counter() - t0}
    else:
        out_dir, batch_size = rest
        summary = assign(store, np.load(centroids_path), out_dir, batch_size=int(batch_size))
        report = {"seconds": summary.seconds, "rows_per_s": summary.rows_per_s}
    print(json.dumps({"n": len(store), "baseline_mb": baseline_mb, "peak_rss_mb": peak_rss_mb(), **report}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="pool size N (the second run uses N/10)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--shard-rows", type=int, default=100_000)
    parser.add_argument("--sample-size", type=int, default=100_000, help="k-means training sample")
    parser.add_argument("--niter", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary store goes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_kmeans_", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        shards = generate_store(tmp / "full", args.n, args.dim, args.shard_rows, args.seed)
        gen_s = time.perf_counter() - t0
        gb = args.n * args.dim * 2 / 1e9
        print(f"generated N={args.n:,} x {args.dim} fp16 ({gb:.1f} GB, {len(shards)} shards) in {gen_s:.0f} s")
        link_store(tmp / "tenth", shards[: max(1, len(shards) // 10)])

        centroids = str(tmp / "centroids.npy")
        train = run_worker("train", str(tmp / "full"), centroids, str(args.k), str(args.sample_size), str(args.niter))
        print(f"train_kmeans: k={args.k}, sample={args.sample_size:,}, niter={args.niter}: "
              f"{train['seconds']:.1f} s, peak RSS {train['peak_rss_mb']:.0f} MiB")
        runs = [run_worker("assign", str(tmp / name), centroids, str(tmp / f"out_{name}"), str(args.batch_size))
                for name in ("tenth", "full")]
        print(f"\n{'rows':>12} {'seconds':>8} {'rows/s':>10} {'RSS after import MiB':>20} {'peak RSS MiB':>13}")
        for r in runs:
            print(f"{r['n']:>12,} {r['seconds']:>8.1f} {r['rows_per_s']:>10,.0f} "
                  f"{r['baseline_mb']:>20.0f} {r['peak_rss_mb']:>13.0f}")
        print(f"\npeak RSS ratio N / (N/10): {runs[1]['peak_rss_mb'] / runs[0]['peak_rss_mb']:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
