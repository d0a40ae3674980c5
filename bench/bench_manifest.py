"""Benchmark: manifest throughput with ``decode: full`` vs ``decode: header`` (and engine local vs ray).

Two pools, written to a temporary directory (or ``--dir``) before anything is timed:

* ``synthetic``: the project's generated pool (``ingest.synthetic.generate``: small PNG drawings
  with its planted dirt), ``--pairs`` pairs;
* ``photos``: ``--photos`` JPEGs of ``--side`` x 3/4 ``--side`` pixels (smooth colour fields with
  noise, quality 90), 500 per shard: the size of a typical web photo, where decoding dominates.

For each pool the manifest is built (``build_manifest``, a fresh artefact root each time, page
cache warm) with ``decode="full"`` and with ``decode="header"``, and images/s of each and the
ratio header/full are printed (same run, same machine). With ``--ray`` the full-decode manifest is
also built on a local Ray of ``--ray-cpus`` CPUs (``core.engine.ray``), reporting its wall time
with and without Ray's start, and whether its files equal the local ones byte for byte.

    .venv/bin/python bench/bench_manifest.py [--pairs 4000 --photos 1000 --side 1024 --ray]
"""
from __future__ import annotations

import argparse
import io
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dynamics_assets.core.ingest.manifest import build_manifest


def write_photo_shards(out: Path, n: int, side: int, per_shard: int = 500, seed: int = 0) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = side * 3 // 4, side
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shards = []
    for s in range(-(-n // per_shard)):
        path = out / f"photos-{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                a, b, c = rng.uniform(0.002, 0.02, 3)
                base = np.stack([np.sin(xx * a + i), np.cos(yy * b), np.sin((xx + yy) * c)], axis=-1)
                pixels = (127 + 100 * base + rng.normal(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, "JPEG", quality=90)
                for ext, data in (("jpg", buf.getvalue()), ("txt", f"a photo number {i}".encode())):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append(path)
    return shards


def files(version_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(version_dir.iterdir()) if p.name != "_version.json"}


def timed(shards: list[Path], root: Path, **kwargs):
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    summary = build_manifest(shards, root, **kwargs)
    return time.perf_counter() - t0, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--ray", action="store_true", help="also time the full manifest on a local Ray")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_manifest_", dir=args.dir))
    try:
        from dynamics_assets.core.ingest.synthetic import generate

        ds = generate(work / "raw", pairs=args.pairs, seed=0, samples_per_shard=1000, eval_per_concept=1)
        pools = {"synthetic": sorted((ds.out_dir / "shards").glob("*.tar")),
                 "photos": write_photo_shards(work / "photos", args.photos, args.side)}
        print(f"{'pool':10} {'images':>7} {'full img/s':>11} {'header img/s':>13} {'header/full':>12}  "
              f"quarantined full -> header")
        local_full = {}
        for name, shards in pools.items():
            for s in shards:  # warm the page cache: both modes read the same bytes
                s.read_bytes()
            t_full, full = timed(shards, work / f"m_{name}_full", decode="full")
            t_head, head = timed(shards, work / f"m_{name}_header", decode="header")
            local_full[name] = (t_full, full)
            print(f"{name:10} {full.total:7d} {full.total / t_full:11.0f} {head.total / t_head:13.0f} "
                  f"{t_full / t_head:11.1f}x  {full.quarantined} -> {head.quarantined} "
                  f"(corrupt_image {full.by_reason.get('corrupt_image', 0)} -> "
                  f"{head.by_reason.get('corrupt_image', 0)})")
        if args.ray:
            from dynamics_assets.core.engine.ray import RayEngine

            t0 = time.perf_counter()
            engine = RayEngine(num_cpus=args.ray_cpus)
            engine.start()
            t_start = time.perf_counter() - t0
            try:
                print(f"\nengine ray (local Ray, {args.ray_cpus} CPUs; start {t_start:.1f} s) vs local, decode full:")
                for name, shards in pools.items():
                    t_ray, ray = timed(shards, work / f"m_{name}_ray", decode="full", engine=engine)
                    t_local, local = local_full[name]
                    same = files(ray.version_dir) == files(local.version_dir)
                    print(f"{name:10} local {t_local:6.2f} s  ray {t_ray:6.2f} s (+{t_start:.1f} s start)  "
                          f"local/ray {t_local / t_ray:.2f}x  byte-identical: {same}")
            finally:
                engine.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
