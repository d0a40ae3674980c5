"""Re-curation when shards land: the incremental path against re-curating from scratch, and the
drift that decides between keeping and re-training the centroids.

On a curated pool (``bash scripts/pipeline.sh`` makes the default one under ``data/``), with its
reference encoder, in a throw-away folder:

* setup: the pool minus its last ``--new`` shards is manifested, embedded, clustered (k-means +
  assignment, ``fit.json``), as after a first curation;
* ``incremental``: the ``--new`` shards land: manifest them into the pool, embed them alone,
  measure the drift, assign every row to the kept centroids (what ``shard_embeddings`` plus
  ``recurate_pool`` do when the drift is under the threshold);
* ``full`` (baseline, same run): manifest, embed and cluster the whole grown pool from nothing;
* drift of the same-distribution new shards, and of a shard of noise images with random captions
  (data the encoder never saw), against the default threshold.

    python bench/bench_recuration.py                 # default pool under data/
    python bench/bench_recuration.py --data /path/to/data --new 2 --k 100
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

from dynamics_assets.core.cluster.refresh import FitRecord, decide, encoder_identity
from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.cluster.kmeans import assign, mean_distance, train_kmeans
from dynamics_assets.core.embed.encode import embed_shards
from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.model.clip import EncoderSpec, load_encoder

DEFAULT_THRESHOLD = 0.25  # ClusteringConfig.drift_threshold
WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()


def noise_shard(path: Path, n: int, seed: int = 0) -> None:
    """``n`` pairs of uniform-noise JPEGs with random word captions."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
            caption = " ".join(rng.choice(WORDS, size=6)).encode()
            for ext, data in (("jpg", buf.getvalue()), ("txt", caption)):
                info = tarfile.TarInfo(f"noise{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def cluster(store: EmbeddingStore, k: int, out: Path) -> FitRecord:
    centroids = train_kmeans(store, k, sample_size=100_000, niter=20, seed=0, use_gpu=False)
    summary = assign(store, centroids, out, use_gpu=False)
    record = FitRecord({"k": k}, encoder_identity(store),
                       {s: int(n) for s, n in zip(store.shards, store.counts)}, summary.mean_distance)
    record.write(out)
    return record


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data")
    ap.add_argument("--new", type=int, default=2, help="shards that land after the first curation")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    data = Path(args.data).resolve()
    shards = sorted((data / "raw" / "shards").glob("*.tar"))
    checkpoint = next((data / "artifacts" / "reference_model").glob("*.pt"), None)
    if len(shards) <= args.new or checkpoint is None:
        raise SystemExit(f"no curated pool under {data}: run `bash scripts/pipeline.sh` first")
    encoder = load_encoder(EncoderSpec(checkpoint.stem, str(checkpoint)), args.device)
    old, new = shards[: -args.new], shards[-args.new:]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pool_dir = tmp / "shards"
        pool_dir.mkdir()
        for shard in shards:
            (pool_dir / shard.name).symlink_to(shard)
        manifest, emb, clusters = tmp / "manifest", tmp / "emb", tmp / "clusters"

        # setup: the first curation, on the old shards
        build_manifest([pool_dir / s.name for s in old], manifest)
        embed_shards(encoder, manifest, pool_dir, emb)
        fit = cluster(EmbeddingStore(emb), args.k, clusters)

        def incremental():
            build_manifest([pool_dir / s.name for s in new], manifest)
            embedded = embed_shards(encoder, manifest, pool_dir, emb, shards=[s.name for s in new])
            store = EmbeddingStore(emb)
            centroids = np.load(clusters / "centroids.npy")
            decision = decide("auto", fit, {"k": args.k}, encoder_identity(store),
                              {s: int(n) for s, n in zip(store.shards, store.counts)},
                              lambda names: mean_distance(store, centroids, names, use_gpu=False), DEFAULT_THRESHOLD)
            assign(store, centroids, clusters, use_gpu=False)
            return embedded, decision

        (embedded, decision), t_incremental = timed(incremental)

        def full():
            manifest_full, emb_full = tmp / "manifest_full", tmp / "emb_full"
            build_manifest([pool_dir / s.name for s in shards], manifest_full)
            embed_shards(encoder, manifest_full, pool_dir, emb_full)
            return cluster(EmbeddingStore(emb_full), args.k, tmp / "clusters_full")

        _, t_full = timed(full)

        # data the encoder never saw: noise images, random captions
        noise = pool_dir / "zz-noise.tar"
        noise_shard(noise, 2000)
        build_manifest([noise], manifest)
        embed_shards(encoder, manifest, pool_dir, emb, shards=[noise.name])
        store = EmbeddingStore(emb)
        rows, noise_mean = mean_distance(store, np.load(clusters / "centroids.npy"), ["zz-noise"], use_gpu=False)
        noise_drift = noise_mean / fit.mean_distance - 1
        shutil.rmtree(tmp / "emb_full", ignore_errors=True)

    print(f"pool: {len(old)} shards first curated, {len(new)} land ({embedded.pairs_embedded} pairs embedded "
          f"alone), k={args.k}, device={args.device}")
    print(f"incremental (manifest + embed new + drift + assign): {t_incremental:7.2f} s")
    print(f"full re-curation (manifest + embed all + k-means + assign): {t_full:7.2f} s")
    print(f"ratio full / incremental: {t_full / t_incremental:.2f}x")
    print(f"fit mean distance (1 - cos to nearest centroid): {fit.mean_distance:.4f}")
    print(f"same-distribution new shards: drift {decision.drift:+.3f} -> {decision.action} ({decision.reason})")
    print(f"noise shard ({rows} rows): drift {noise_drift:+.3f} -> "
          f"{'retrain' if noise_drift > DEFAULT_THRESHOLD else 'assign'} at threshold {DEFAULT_THRESHOLD}")


if __name__ == "__main__":
    main()
