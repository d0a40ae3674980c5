"""GPU check, one script: faiss k-means on the GPU against the CPU, and one real CUDA training epoch
against the same epoch on the CPU, in one run (ratios, not absolute times, are what count).

    python bench/gpu_epoch.py [--pairs 20000] [--n 2000000 --dim 512 --k 4096]

Run by bench/gpu.sh on a lent GPU machine; on a machine without one it says so and exits 3.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def kmeans(n: int, dim: int, k: int, niter: int) -> dict:
    import faiss

    if faiss.get_num_gpus() == 0:
        return {"faiss_gpus": 0}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = {"faiss_gpus": faiss.get_num_gpus(), "n": n, "dim": dim, "k": k, "niter": niter}
    for gpu in (True, False):
        sample = x if gpu else x[: n // 10]  # the CPU fit on a tenth (same iterations), scaled per row below
        km = faiss.Kmeans(dim, k, niter=niter, spherical=True, gpu=gpu, seed=1, max_points_per_centroid=10**9)
        t = time.perf_counter()
        km.train(sample)
        dt = time.perf_counter() - t
        out[f"{'gpu' if gpu else 'cpu'}_rows_per_s"] = len(sample) * niter / dt
    out["gpu_vs_cpu"] = out["gpu_rows_per_s"] / out["cpu_rows_per_s"]
    return out


def epoch(pairs: int, device: str, tmp: Path) -> dict:
    from dynamics_assets.core.ingest.manifest import build_manifest
    from dynamics_assets.core.ingest.synthetic import generate
    from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, write_plan
    from dynamics_assets.core.train.epoch import EpochJob, run_epoch

    ds = generate(tmp / "raw", pairs=pairs, samples_per_shard=2000, eval_per_concept=1, seed=0)
    summary = build_manifest(ds.shards, tmp / "manifest")
    ids = np.random.default_rng(0).integers(0, 50, summary.ok).astype(np.int32)
    plan = DynamicsSampler(0.5, alpha=0.2, mode="exact").draw(ClusterPool.from_array(ids, 50), epoch=1, seed=0)
    plan_dir = write_plan(tmp / "plan", plan, pool_version="bench-pool")
    out = {}
    for dev in dict.fromkeys([device, "cpu"]):
        job = EpochJob(plan_dir=str(plan_dir), manifest_dir=str(summary.version_dir), shards_dir=str(ds.out_dir / "shards"),
                       out_checkpoint=str(tmp / f"ck-{dev}"), epoch=1, n_epochs=1, batch_size=256, buffer_size=1024,
                       checkpoint_every_steps=0, device=dev, precision="bf16", num_workers=8 if dev != "cpu" else 0,
                       pool_version="bench-pool")
        t = time.perf_counter()
        m = run_epoch(job, progress=lambda *a: None)
        out[dev] = {"samples_per_s": m["epoch_samples"] / (time.perf_counter() - t), "steps": m["steps"],
                    "final_loss": m["final_loss"], "precision": m["precision"]}
    if device != "cpu":
        out["gpu_vs_cpu"] = out[device]["samples_per_s"] / out["cpu"]["samples_per_s"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--niter", type=int, default=10)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure here")
        return 3
    print("kmeans:", kmeans(args.n, args.dim, args.k, args.niter), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        print("epoch:", epoch(args.pairs, "cuda", Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
