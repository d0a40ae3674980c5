"""The data filtering network (DFN) and the curated model: a CLIP trained on the curated set, its per-pair scores of the pool, and its quality as a filter apart from its quality as a model.

* ``train_curated_model``: the curated shards are manifested (``ingest.manifest.build_manifest``:
  quarantine and duplicates as for the pool) and the curated model is trained on them with the
  reference model's own trainer (``train.loop.train_reference_model``: same settings rules, same
  resume and reuse). Its compute is counted: optimiser steps, samples seen, seconds and training
  FLOPs ≈ 3 × forward FLOPs per pair × samples seen (``model.flops``).
* ``score_pool``: the data filtering network (Fang et al., "Data Filtering Networks", ICLR 2024) —
  s_i = cos(f_img(x_i), f_txt(t_i)) in the curated model's space for every ok pair of the pool, in
  pool order (the manifest's ok rows, shards by name: the order every plan indexes). The pool is
  embedded with that model shard by shard (``embed.encode.embed_shards``, resumable) and the scores
  are computed one shard at a time into ``scores.npy`` (float32, N): memory O(one shard). A pair
  whose image does not decode (a non-finite or zero embedding) scores ``UNSCORED`` = −2, below any
  cosine, and is counted.
* ``filter_quality``: on the synthetic pool the generator knows every pair's dirt
  (``ground_truth.parquet``, joined on (shard, key)). Clean pairs (no dirt) against *misaligned*
  ones (``mismatched_caption``, ``empty_caption``: the caption does not describe the image, what an
  image–text score can see): ROC AUC (the probability that a clean pair outscores a misaligned
  one, ties half), and at keep fraction f: precision = clean share of the kept, recall = kept clean
  / all clean, and the share of misaligned pairs removed. Duplicates are reported apart (mean score),
  as no per-pair score can tell a duplicate from its source.
* ``zero_shot_top1``: the curated model's own zero-shot top-1 on the evaluation set — a different
  quantity from its quality as a filter (DFN's point: a better filter need not be a better model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

UNSCORED = -2.0  # the score of a pair whose embedding is non-finite (an image that does not decode)
MISALIGNED = ("mismatched_caption", "empty_caption")
SCORES_FILE = "scores.npy"


@dataclass(frozen=True)
class ScoreSummary:
    n: int
    unscored: int
    mean: float
    quantiles: dict[str, float]


def train_curated_model(curated_dir: str | Path, manifest_root: str | Path, out_path: str | Path, *,
                        model_name: str, epochs: int | None, batch_size: int | None, seed: int, device: str,
                        reuse: bool = True) -> dict[str, Any]:
    """Manifest the curated shards and train the curated model on them; its metrics, compute and
    the curated manifest's version (``manifest_dir``)."""
    from dynamics_assets.core.ingest.manifest import build_manifest
    from dynamics_assets.core.train.loop import train_reference_model
    from dynamics_assets.core.train.settings import batch_for, reference_epochs_for

    shards = sorted(Path(curated_dir).glob("*.tar"))
    manifest = build_manifest(shards, manifest_root)
    if manifest.ok < 2:
        raise ValueError(f"curated set {curated_dir}: {manifest.ok} valid pair(s) after quarantine "
                         f"({dict(manifest.by_reason)}): too few to train on")
    batch = batch_size or batch_for(manifest.ok)
    batch = min(batch, manifest.ok)
    epochs = epochs or reference_epochs_for(manifest.ok, batch)
    metrics = train_reference_model(manifest.version_dir, curated_dir, out_path, model_name=model_name,
                                    epochs=epochs, batch_size=batch, seed=seed, device=device, reuse=reuse)
    from dynamics_assets.core.train.reference import training_flops
    return {**metrics, "flops": training_flops(model_name, int(metrics.get("samples_seen", 0))),
            "epochs": epochs, "batch_size": batch, "pairs": manifest.ok, "quarantined": manifest.quarantined,
            "manifest_dir": str(manifest.version_dir)}


def score_pool(spec, manifest_dir: str | Path, shards_dir: str | Path, embeddings_root: str | Path,
               out_path: str | Path, *, device: str = "cpu", batch_size: int = 256, num_workers: int = 0,
               engine=None) -> tuple[ScoreSummary, Any]:
    """Embed the pool with ``spec`` (the curated model) and write the per-pair score array."""
    from dynamics_assets.core.embed.encode import embed_shards
    from dynamics_assets.core.embed.store import EmbeddingStore
    from dynamics_assets.core.ingest.manifest import pool_counts
    from dynamics_assets.core.io.atomic import atomic_path

    summary = embed_shards(spec, manifest_dir, shards_dir, embeddings_root, batch_size=batch_size, device=device,
                           num_workers=num_workers, engine=engine)
    image, text = EmbeddingStore(summary.version_dir, "image"), EmbeddingStore(summary.version_dir, "text")
    n = sum(c for _, c in pool_counts(manifest_dir))
    if len(image) != n or len(text) != n:
        raise ValueError(f"{summary.version_dir}: {len(image)} embeddings for a pool of {n} pairs")
    out_path = Path(out_path)
    unscored = 0
    total = 0.0
    with atomic_path(out_path) as tmp:
        scores = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n,))
        for s, shard in enumerate(image.shards):  # one shard in memory at a time
            lo, hi = int(image.offsets[s]), int(image.offsets[s + 1])
            a = np.load(image.embedding_path(shard), mmap_mode="r").astype(np.float32)
            b = np.load(text.embedding_path(shard), mmap_mode="r").astype(np.float32)
            dots = np.einsum("ij,ij->i", a, b)
            bad = ~np.isfinite(dots) | (np.linalg.norm(a, axis=1) == 0) | (np.linalg.norm(b, axis=1) == 0)
            dots[bad] = UNSCORED
            unscored += int(bad.sum())
            total += float(dots[~bad].sum())
            scores[lo:hi] = dots
        scores.flush()
        del scores
    arr = np.load(out_path, mmap_mode="r")
    valid = arr[arr > UNSCORED]
    qs = {f"q{int(q * 100):02d}": float(np.quantile(valid, q)) for q in (0.1, 0.5, 0.7, 0.9)} if len(valid) else {}
    return ScoreSummary(n, unscored, total / max(1, n - unscored), qs), summary


def _roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive outscores a negative), ties half (Mann–Whitney U / (n_p n_n))."""
    if not len(positive) or not len(negative):
        return float("nan")
    allv = np.concatenate([positive, negative])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv), dtype=np.float64)
    sorted_v = allv[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[:len(positive)].sum() - len(positive) * (len(positive) + 1) / 2.0
    return float(u / (len(positive) * len(negative)))


def filter_quality(scores_path: str | Path, manifest_dir: str | Path, ground_truth: str | Path,
                   fraction: float = 0.3) -> dict[str, Any]:
    """The score's quality as a filter against the generator's ground truth (module docstring)."""
    import duckdb

    from dynamics_assets.core.ingest.manifest import ok_rows

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    scores = np.load(scores_path, mmap_mode="r")
    with duckdb.connect() as con:
        truth = con.sql('SELECT shard, "key", coalesce(dirt, \'clean\') AS dirt FROM read_parquet(?)',
                        params=[str(ground_truth)]).fetchall()
    dirt_of = {(shard, key): dirt for shard, key, dirt in truth}
    labels = np.empty(len(scores), dtype=object)
    start = 0
    for table in ok_rows(manifest_dir):
        for j, (sh, key) in enumerate(zip(table["shard"].to_pylist(), table["key"].to_pylist())):
            labels[start + j] = dirt_of.get((sh, key), "unknown")
        start += table.num_rows
    if start != len(scores):
        raise ValueError(f"{scores_path}: {len(scores)} scores, the manifest {manifest_dir} has {start} ok pairs")
    s = np.asarray(scores, dtype=np.float64)
    clean = labels == "clean"
    misaligned = np.isin(labels, MISALIGNED)
    kept = np.zeros(len(s), dtype=bool)
    count = int(round(fraction * len(s)))
    kept[np.argsort(-s, kind="stable")[:count]] = True
    by_dirt = {str(d): {"pairs": int((labels == d).sum()), "mean_score": float(s[labels == d].mean()),
                        "kept_share": float(kept[labels == d].mean())}
               for d in sorted(set(labels.tolist()))}
    return {
        "fraction": fraction, "kept": count,
        "auc_clean_vs_misaligned": _roc_auc(s[clean], s[misaligned]),
        "precision_clean": float(clean[kept].mean()) if count else float("nan"),
        "recall_clean": float(kept[clean].sum() / max(1, clean.sum())),
        "misaligned_removed": float(1.0 - kept[misaligned].mean()) if misaligned.any() else float("nan"),
        "clean_pairs": int(clean.sum()), "misaligned_pairs": int(misaligned.sum()),
        "base_rate_clean": float(clean.mean()), "by_dirt": by_dirt,
    }


def zero_shot_top1(spec, eval_dir: str | Path, eval_kind: str | None, device: str = "cpu") -> dict[str, float]:
    """The curated model's own zero-shot top-1 / top-5 on the evaluation set."""
    from dynamics_assets.core.evaluate.report import class_embeddings, embed_eval_images, load_eval_set, \
        zero_shot_metrics
    from dynamics_assets.core.model.clip import load_encoder

    if eval_kind == "synthetic":
        eval_set = load_eval_set(eval_dir)
    else:
        from dynamics_assets.core.evaluate import labelled

        eval_set = labelled.load_labelled_set(eval_dir)
    enc = load_encoder(spec, device)
    image_emb = embed_eval_images(enc.model, enc.preprocess, eval_set, str(enc.device))
    class_emb = class_embeddings(enc.model, enc.tokenizer, eval_set.prompt_names, eval_set.templates, str(enc.device))
    zs = zero_shot_metrics(image_emb, class_emb, eval_set.labels, train_frequency=eval_set.train_frequency)
    return {"top1": zs["top1"], "top5": zs.get("top5", float("nan")), "images": len(eval_set),
            "classes": len(class_emb), "chance": 1.0 / len(class_emb)}


def finite(d: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata-safe values: NaN → None."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
