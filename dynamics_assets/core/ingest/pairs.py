"""Manifesting every pair of the pool (the ``raw_pairs`` step's core): webdataset shards read one
task each on an engine (``manifest.build_manifest``; shards the source no longer has leave the
pool, img2dataset's own counts compared), or a pool that ships its embeddings, manifested and
embedded in one streamed pass (``precomputed.ingest_precomputed``)."""
from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable

from dynamics_assets.core.records import PoolManifest, RawShards

DECODES = ("full", "header")


class DecodeError(ValueError):
    """``raw_pairs.decode`` is neither 'full' nor 'header'."""


def manifest_shards(raw_shards: RawShards, root: str | Path, *, decode: str,
                    engine: Callable[[], AbstractContextManager], engine_name: str, log) -> tuple[PoolManifest, dict[str, Any]]:
    """(record, facts) of the webdataset pool's manifest, committed as a new version of ``root``
    (shards read one task each on ``engine()``, named ``engine_name`` in the facts).
    The pool follows its source: shards of the previous version that the source no longer has leave
    the pool (recorded in the facts), instead of lingering until training misses them. Facts: a
    ``Path`` is a path, a ``list`` JSON; ``quarantine_reasons`` and ``img2dataset_mismatches`` are rows."""
    from dynamics_assets.core.ingest.manifest import build_manifest, manifest_files
    from dynamics_assets.core.ingest.sources import img2dataset_stats, stats_mismatches
    from dynamics_assets.core.io.versions import Artefact

    shards_dir = Path(raw_shards.shards_dir)
    current = Artefact(root).current()
    gone = sorted({name for name, _ in manifest_files(current)} - set(raw_shards.shards)) if current else []
    if decode not in DECODES:
        raise DecodeError(f"raw_pairs.decode must be 'full' or 'header', got {decode!r}")
    with engine() as eng:
        summary = build_manifest([shards_dir / s for s in raw_shards.shards], root, drop=gone, decode=decode, engine=eng)
    out = summary.version_dir
    stats = img2dataset_stats(shards_dir)
    mismatches = stats_mismatches(stats, {c.shard: c.rows for c in summary.per_shard}, raw_shards.shards)
    for m in mismatches:
        log.warning(f"{m.shard}: {m.note}")
    log.info(f"manifest: {summary.ok} ok, {summary.quarantined} quarantined "
             f"({summary.by_reason}); read {len(summary.read_shards)} shard(s), "
             f"reused {len(summary.reused_shards)}, dropped {len(summary.dropped_shards)} gone from the source")
    facts = {
        "pairs": summary.total, "ok": summary.ok, "quarantined": summary.quarantined,
        "quarantine_reasons": sorted(summary.by_reason.items()), "empty_shards": len(summary.empty_shards),
        "shards_gone_from_source": list(summary.dropped_shards),
        "img2dataset_stats": ("no _stats.json files" if not stats else
                              f"{len(stats)} stats files, {len(mismatches)} shard(s) disagree"),
        **({"img2dataset_mismatches": [(m.shard, m.stated, m.read, m.note) for m in mismatches]} if mismatches else {}),
        "manifest_version": str(summary.version_id), "decode": decode, "engine": engine_name,
        "manifest_dir": Path(out), "dagster/row_count": summary.total,
    }
    record = PoolManifest(manifest_dir=str(out), shards_dir=str(shards_dir), n_ok=summary.ok,
                          n_total=summary.total, by_reason=dict(summary.by_reason), eval_dir=raw_shards.eval_dir,
                          eval_kind=raw_shards.eval_kind, curated_dir=raw_shards.curated_dir,
                          target_dir=raw_shards.target_dir, ground_truth=raw_shards.ground_truth)
    return record, facts


def ingest_precomputed_pool(raw_shards: RawShards, manifest_root: str | Path, embeddings_root: str | Path,
                            log) -> tuple[PoolManifest, dict[str, Any]]:
    """(record, facts) of a pool that ships its embeddings: manifest and embeddings committed in one
    streamed pass (part by part); the pairs have no images, so nothing is encoded or trained
    downstream. With ``images_dir``: which uids those shards have images for (reported; not trained
    on). Facts: a ``Path`` is a path; a ``list``, JSON; ``quarantine_reasons`` the (reason, pairs) rows."""
    from dynamics_assets.core.ingest.precomputed import ingest_precomputed, join_images
    from dynamics_assets.core.model.spec import EncoderSpec

    s = ingest_precomputed(f"{raw_shards.layout}:{raw_shards.shards_dir}", manifest_root, embeddings_root,
                           embedding=raw_shards.embedding or "b32")
    joined = {}
    if raw_shards.images_dir:
        j = join_images(s.manifest_dir, sorted(Path(raw_shards.images_dir).glob("*.tar")))
        if j.without_image:
            log.warning(f"{j.without_image} of {j.pool_ok} uids have no image in {raw_shards.images_dir}")
        joined = {"uids_with_image": j.with_image, "uids_without_image": j.without_image,
                  "uids_without_image_sample": list(j.missing_sample), "shard_samples_not_in_pool": j.not_in_pool}
    facts = {
        **joined, "pairs": s.total, "ok": s.ok, "quarantined": s.quarantined,
        "quarantine_reasons": sorted(s.by_reason.items()),
        "layout": s.layout, "embedding": str(s.embedding), "dim": s.dim, "parts": len(s.parts),
        "images": False, "manifest_dir": Path(s.manifest_dir),
        "manifest_version": s.manifest_version, "embeddings_version": s.embeddings_version,
        "dagster/row_count": s.total,
    }
    record = PoolManifest(manifest_dir=str(s.manifest_dir), shards_dir=raw_shards.shards_dir, n_ok=s.ok,
                          n_total=s.total, by_reason=dict(s.by_reason), eval_dir=raw_shards.eval_dir,
                          eval_kind=raw_shards.eval_kind, has_images=False, embeddings_dir=str(s.embeddings_dir),
                          curated_dir=raw_shards.curated_dir, target_dir=raw_shards.target_dir,
                          encoder=EncoderSpec(s.encoder["model_name"], None, precision="fp16"))
    return record, facts
