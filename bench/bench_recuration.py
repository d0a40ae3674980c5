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

from dynamics_assets.core.cluster.curate import ClusterParams, cluster_pool
from dynamics_assets.core.cluster.kmeans import mean_distance
from dynamics_assets.core.cluster.refresh import FitRecord
from dynamics_assets.core.embed.encode import embed_shards
from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.ingest.manifest import build_manifest
from dynamics_assets.core.io.versions import Artefact
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


def cluster(embeddings_dir: Path, manifest_dir: Path, k: int, root: Path, refresh: str = "retrain"):
    """The clusters stage as the pipeline runs it (a new version of ``root``)."""
    return cluster_pool(embeddings_dir, manifest_dir, root, ClusterParams(k=k), refresh=refresh, use_gpu=False)


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
    reference = Artefact(data / "artifacts" / "reference_model").current()
    checkpoint = next(reference.glob("*.pt"), None) if reference is not None else None
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

        # setup: the first curation, on the old shards (each stage commits a version of its root)
        m = build_manifest([pool_dir / s.name for s in old], manifest)
        e = embed_shards(encoder, m.version_dir, pool_dir, emb)
        first = cluster(e.version_dir, m.version_dir, args.k, clusters)
        fit = FitRecord.read(first.clusters_dir)

        def incremental():
            m2 = build_manifest([pool_dir / s.name for s in new], manifest)
            embedded = embed_shards(encoder, m2.version_dir, pool_dir, emb, shards=[s.name for s in new])
            result = cluster(embedded.version_dir, m2.version_dir, args.k, clusters, refresh="auto")
            return embedded, result.decision

        (embedded, decision), t_incremental = timed(incremental)

        def full():
            mf = build_manifest([pool_dir / s.name for s in shards], tmp / "manifest_full")
            ef = embed_shards(encoder, mf.version_dir, pool_dir, tmp / "emb_full")
            return cluster(ef.version_dir, mf.version_dir, args.k, tmp / "clusters_full")

        _, t_full = timed(full)

        # data the encoder never saw: noise images, random captions
        noise = pool_dir / "zz-noise.tar"
        noise_shard(noise, 2000)
        mn = build_manifest([noise], manifest)
        en = embed_shards(encoder, mn.version_dir, pool_dir, emb, shards=[noise.name])
        store = EmbeddingStore(en.version_dir)
        centroids = np.load(Artefact(clusters).current() / "centroids.npy")
        rows, noise_mean = mean_distance(store, centroids, ["zz-noise"], use_gpu=False)
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
