"""Benchmark: per-epoch plan generation throughput and working memory.

Compares, in one run on the same machine:
  * the DynamiCS reference mechanism — a Python dict sample-key → p_c and one ``random()`` per
    sample, as the reference data loader filters (measured at --ref-n samples; its dictionary
    alone costs ~100 bytes per sample, so it is not run at 10^8);
  * our streaming samplers (DynamiCS exact / upsample / bernoulli, uniform exact) at each --n,
    reading int32 cluster ids from an .npy file on disk.
Each measurement runs in a fresh subprocess so peak-memory figures do not mix; working memory is
peak RSS minus the RSS before the draw, divided by N.

Targets (shared/notes/performance.md): ≥ 100 M samples/s at N = 100M, ≥ 50× the reference
mechanism, ≤ 8 bytes of working memory per sample.

    .venv/bin/python bench/bench_plans.py                 # N = 10M and 100M, K = 10k
    .venv/bin/python bench/bench_plans.py --n 2000000 --ref-n 1000000   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def write_pool(path: Path, n: int, k: int, seed: int = 0) -> None:
    """Zipf-sized clusters (s = 1.1), samples in random order, streamed to an int32 .npy file."""
    rng = np.random.default_rng(seed)
    p = np.arange(1, k + 1, dtype=np.float64) ** -1.1
    cdf = np.cumsum(p / p.sum())
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(n,))
    step = 1 << 22
    for s in range(0, n, step):
        m = min(step, n - s)
        out[s:s + m] = np.minimum(np.searchsorted(cdf, rng.random(m)), k - 1)
    out.flush()
    del out


def child_ours(path: str, k: int, strategy: str, mode: str, repeats: int) -> dict:
    from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, UniformSampler

    pool = ClusterPool.from_npy(path, k)
    _ = pool.sizes  # cluster statistics: computed once per clustering, not per epoch
    sampler = (UniformSampler(0.5, mode=mode) if strategy == "uniform"
               else DynamicsSampler(0.5, alpha=0.2, mode=mode))
    before = rss_kib("VmRSS")
    times = []
    for epoch in range(1, repeats + 1):
        t = time.perf_counter()
        plan = sampler.draw(pool, epoch=epoch, seed=0)
        times.append(time.perf_counter() - t)
        size = plan.size
        del plan
    peak = rss_kib("VmHWM")
    n = len(pool)
    return {"n": n, "seconds": min(times), "samples_per_s": n / min(times),
            "working_bytes_per_sample": (peak - before) * 1024 / n, "planned": size}


def child_reference(n: int, k: int) -> dict:
    """The reference mechanism: key → probability dict, one random() per sample."""
    import random

    rng = np.random.default_rng(0)
    p_cluster = rng.random(k)
    clusters = rng.integers(0, k, n)
    keys = [f"{i:09d}" for i in range(n)]
    before = rss_kib("VmRSS")
    prob = {key: float(p_cluster[c]) for key, c in zip(keys, clusters.tolist())}
    del clusters
    after_dict = rss_kib("VmRSS")
    random.seed(0)
    t = time.perf_counter()
    kept = [key for key in keys if random.random() < prob[key]]
    dt = time.perf_counter() - t
    return {"n": n, "seconds": dt, "samples_per_s": n / dt,
            "dict_bytes_per_sample": (after_dict - before) * 1024 / n, "planned": len(kept)}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[10_000_000, 100_000_000])
    ap.add_argument("--k", type=int, default=10_000)
    ap.add_argument("--ref-n", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs="*")
    args = ap.parse_args()
    if args.child is not None:
        kind, *rest = args.child
        if kind == "reference":
            res = child_reference(int(rest[0]), int(rest[1]))
        else:
            res = child_ours(rest[0], int(rest[1]), rest[2], rest[3], int(rest[4]))
        print(json.dumps(res))
        return

    print(f"machine: {os.cpu_count()} cores, numpy {np.__version__}")
    ref = run_child("reference", str(args.ref_n), str(args.k))
    print(f"reference mechanism  N={ref['n']:>11,}  {ref['samples_per_s'] / 1e6:8.2f} M samples/s  "
          f"dict {ref['dict_bytes_per_sample']:.0f} B/sample")
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / "build" if (ROOT / "build").exists() else None) as tmp:
        for n in args.n:
            path = Path(tmp) / f"cluster_id_{n}.npy"
            write_pool(path, n, args.k)
            for strategy, mode in [("dynamics", "exact"), ("dynamics", "upsample"),
                                   ("dynamics", "bernoulli"), ("uniform", "exact")]:
                r = run_child("ours", str(path), str(args.k), strategy, mode, str(args.repeats))
                r.update(strategy=strategy, mode=mode, ratio=r["samples_per_s"] / ref["samples_per_s"])
                rows.append(r)
                print(f"{strategy:>8}/{mode:<9} N={n:>11,}  {r['samples_per_s'] / 1e6:8.1f} M samples/s  "
                      f"{r['ratio']:6.1f}x reference  {r['working_bytes_per_sample']:5.2f} B/sample working  "
                      f"planned {r['planned']:,}")
            path.unlink()
    print(json.dumps({"reference": ref, "ours": rows}))


if __name__ == "__main__":
    main()
