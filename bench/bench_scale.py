"""Benchmark: the curation stages at scale, from precomputed embeddings on disk.

For each pool size N (default 10^7 and 10^8) this script

  1. generates N x 256 fp16 unit embeddings on disk in the EmbeddingStore layout (one directory
     per shard of --shard-rows rows, ``image.npy`` + ``sample_id.npy``, like real embedding
     shards), streamed in chunks: clustered data, rows = a true centre (one of --true-k, Zipf-sized,
     s = 1.1) plus Gaussian noise, normalised; deterministic by --seed;
  2. trains spherical k-means (faiss, ``cluster.kmeans.train_kmeans``) on a --sample-size sample;
  3. assigns every row with the real ``cluster.kmeans.assign`` (cluster_id.npy, distance.npy,
     assignments.parquet, quarantine.parquet, one committed clusters version);
  4. computes the cluster statistics with the real ``cluster.stats.compute_cluster_stats``
     (DuckDB over assignments.parquet; no captions here, so no top words);
  5. draws and writes 3 epochs of DynamiCS plans (exact, 50 %, alpha 0.2) with
     ``DynamicsSampler.draw`` + ``plan_io.write_plan`` on ``ClusterPool.from_artifacts``.

Every stage runs in a fresh subprocess and reports its wall time and peak RSS (VmHWM); the script
prints a table per N and the peak-RSS ratio between the largest and the smallest N per stage
(target ~1.0 for generation, training, assignment and statistics: memory independent of N; the
plan stage holds its output — 6 bytes per planned sample — so it grows with the plan).

K (--k, default 1000): assignment costs N x K x D x 2 flops, so K is what decides whether 10^8 rows
fit in a run on a 2-core box; the k rule of the project (about sqrt(N)-ish, ~7,300 at 10^8)
would make the assignment ~7x longer. The data go under --workdir and are deleted at the end
unless --keep.

    .venv/bin/python bench/bench_scale.py --n 1000000 10000000 --workdir /work/scratch_p
    flock /tmp/heavy.lock .venv/bin/python bench/bench_scale.py --n 10000000 100000000 --workdir /work/scratch_p
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM = 256
CHUNK_ROWS = 1 << 16
ID_DIGITS = 11  # sample ids "s" + 11 digits (S12)


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found")


def _write_npy_header(f, shape: tuple, dtype: np.dtype) -> None:
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})


def sample_ids(lo: int, hi: int) -> np.ndarray:
    """Sample ids "s00000000042" of rows [lo, hi), built digit by digit (vectorised)."""
    i = np.arange(lo, hi, dtype=np.int64)
    powers = 10 ** np.arange(ID_DIGITS - 1, -1, -1, dtype=np.int64)
    chars = np.empty((hi - lo, ID_DIGITS + 1), dtype=np.uint8)
    chars[:, 0] = ord("s")
    chars[:, 1:] = (i[:, None] // powers) % 10 + ord("0")
    return chars.view(f"S{ID_DIGITS + 1}")[:, 0]


def generate(root: Path, n: int, shard_rows: int, true_k: int, seed: int, noise: float) -> dict:
    """Write the embedding store shard by shard with sequential writes (no memory map, so resident
    memory is one chunk whatever N). Rows: unit(centre[label] + noise * gaussian / sqrt(D))."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((true_k, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    p = np.arange(1, true_k + 1, dtype=np.float64) ** -1.1
    cdf = np.cumsum(p / p.sum())
    # A bank of Gaussian noise rows; each chunk takes a random window of it and a random column
    # permutation (both keep the rows Gaussian), so generation is bounded by memory and disk speed.
    bank = (rng.standard_normal((2 * CHUNK_ROWS, DIM), dtype=np.float32) * (noise / np.sqrt(DIM)))
    root.mkdir(parents=True, exist_ok=True)
    shards = 0
    for si, start in enumerate(range(0, n, shard_rows)):
        rows = min(shard_rows, n - start)
        shard = root / f"shard-{si:06d}"
        tmp = root / f".shard-{si:06d}.tmp"
        tmp.mkdir(parents=True)
        with open(tmp / "image.npy", "wb") as f:
            _write_npy_header(f, (rows, DIM), np.float16)
            for s in range(0, rows, CHUNK_ROWS):
                m = min(CHUNK_ROWS, rows - s)
                labels = np.minimum(np.searchsorted(cdf, rng.random(m)), true_k - 1)
                off = int(rng.integers(CHUNK_ROWS))
                x = bank[off:off + m].take(rng.permutation(DIM), axis=1)
                x += centres.take(labels, axis=0)
                x *= (1.0 / np.sqrt(np.einsum("ij,ij->i", x, x)))[:, None]
                x.astype(np.float16).tofile(f)
        with open(tmp / "sample_id.npy", "wb") as f:
            _write_npy_header(f, (rows,), np.dtype(f"S{ID_DIGITS + 1}"))
            for s in range(0, rows, CHUNK_ROWS):
                f.write(sample_ids(start + s, start + min(rows, s + CHUNK_ROWS)).tobytes())
        (tmp / "meta.json").write_text(json.dumps({"rows": rows, "dim": DIM, "dtype": "float16",
                                                   "synthetic": True, "seed": seed}))
        os.replace(tmp, shard)
        shards += 1
    return {"shards": shards, "bytes": n * DIM * 2}


def stage(name: str, work: Path, n: int, args: argparse.Namespace) -> dict:
    """Run one stage in this (fresh) process; return its report."""
    emb, clusters, stats_dir, plans = work / "emb", work / "clusters", work / "stats", work / "plans"
    centroids_path = work / "centroids.npy"
    t0 = time.perf_counter()
    extra: dict = {}
    if name == "generate":
        extra = generate(emb, n, args.shard_rows, args.true_k, args.seed, args.noise)
    elif name == "train":
        from dynamics_assets.core.cluster.kmeans import train_kmeans
        from dynamics_assets.core.embed.store import EmbeddingStore
        from dynamics_assets.core.io.atomic import save_npy

        c = train_kmeans(EmbeddingStore(emb), args.k, sample_size=args.sample_size, niter=args.niter,
                         seed=args.seed, use_gpu=False)
        save_npy(centroids_path, c)
    elif name == "assign":
        from dynamics_assets.core.cluster.kmeans import assign
        from dynamics_assets.core.embed.store import EmbeddingStore

        s = assign(EmbeddingStore(emb), np.load(centroids_path), clusters, use_gpu=False)
        extra = {"rows_per_s": s.rows_per_s, "empty_clusters": s.n_empty_clusters,
                 "mean_distance": s.mean_distance, "quarantined": s.n_quarantined}
    elif name == "stats":
        from dynamics_assets.core.cluster.stats import compute_cluster_stats

        st = compute_cluster_stats(clusters, None, None, stats_dir, spill_dir=work / "spill")
        sizes = st.table["size"].to_numpy()
        extra = {"clusters": len(sizes), "largest": int(sizes.max()), "smallest_nonempty": int(sizes[sizes > 0].min())}
    elif name == "plans":
        from dynamics_assets.core.io import versions
        from dynamics_assets.core.sample import ClusterPool, DynamicsSampler
        from dynamics_assets.core.sample.plan_io import write_plan

        pool = ClusterPool.from_artifacts(versions.resolve(clusters), args.k, emb)
        sampler = DynamicsSampler(0.5, alpha=0.2, mode="exact")
        epochs = []
        for epoch in range(1, args.epochs + 1):
            te = time.perf_counter()
            plan = sampler.draw(pool, epoch=epoch, seed=args.seed)
            td = time.perf_counter() - te
            write_plan(plans, plan)
            epochs.append({"epoch": epoch, "draw_s": td, "draw_and_write_s": time.perf_counter() - te,
                           "planned": plan.size})
            del plan
        extra = {"epochs": epochs}
    else:
        raise ValueError(name)
    return {"stage": name, "n": n, "seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib(), **extra}


STAGES = ("generate", "train", "assign", "stats", "plans")


def run_stage(name: str, work: Path, n: int, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--stage", name, str(work), str(n), *argv],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000_000, 100_000_000])
    ap.add_argument("--k", type=int, default=1000, help="k-means centroids (assignment cost ~ N*K)")
    ap.add_argument("--true-k", type=int, default=2000, help="true centres of the synthetic data")
    ap.add_argument("--noise", type=float, default=1.0, help="noise norm relative to a unit centre")
    ap.add_argument("--shard-rows", type=int, default=10_000_000)
    ap.add_argument("--sample-size", type=int, default=200_000, help="k-means training sample")
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/work/scratch_p"))
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    return ap


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--stage":
        name, work, n, *argv = sys.argv[2:]
        print(json.dumps(stage(name, Path(work), int(n), parser().parse_args(argv))))
        return
    args = parser().parse_args()
    argv = [a for a in sys.argv[1:]]
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores; K={args.k}, D={DIM} fp16, shards of {args.shard_rows:,} rows")
    results: dict[int, list[dict]] = {}
    for n in args.n:
        work = Path(tempfile.mkdtemp(prefix=f"scale_{n}_", dir=args.workdir))
        rows = results[n] = []
        try:
            for name in args.stages:
                r = run_stage(name, work, n, argv)
                rows.append(r)
                detail = ""
                if name == "assign":
                    detail = f"{r['rows_per_s']:,.0f} rows/s"
                elif name == "plans":
                    detail = ", ".join(f"epoch {e['epoch']}: draw {e['draw_s']:.2f} s "
                                       f"({n / e['draw_s'] / 1e6:.0f} M/s) + write "
                                       f"{e['draw_and_write_s'] - e['draw_s']:.2f} s" for e in r["epochs"])
                elif name == "generate":
                    detail = f"{r['bytes'] / 1e9:.1f} GB, {r['shards']} shards, {r['bytes'] / r['seconds'] / 1e6:.0f} MB/s"
                elif name == "stats":
                    detail = f"{r['clusters']} clusters, sizes {r['smallest_nonempty']:,}..{r['largest']:,}"
                print(f"N={n:>12,}  {name:<9} {r['seconds']:8.1f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB  {detail}",
                      flush=True)
            du = subprocess.run(["du", "-sb", str(work)], capture_output=True, text=True).stdout.split()[0]
            print(f"N={n:>12,}  on disk {int(du) / 1e9:.1f} GB", flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    if len(args.n) > 1:
        lo, hi = min(args.n), max(args.n)
        print(f"\npeak RSS ratio N={hi:,} / N={lo:,} per stage:")
        for a, b in zip(results[lo], results[hi]):
            print(f"  {a['stage']:<9} {b['peak_rss_mib']:7.0f} / {a['peak_rss_mib']:7.0f} MiB = "
                  f"{b['peak_rss_mib'] / a['peak_rss_mib']:.3f}   time x{b['seconds'] / a['seconds']:.1f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
