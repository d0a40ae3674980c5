"""Class-aware retrieval recall@k (pure numpy) and the row-chunked ranking it shares with zero-shot
classification (``report.zero_shot_metrics``).

A retrieved item counts as relevant when it has the query's label; recall@k is the fraction of
queries with at least one relevant item among the k most similar, reported only for k smaller
than the number of candidates (with k ≥ n it is 1 by construction). Ties are broken as a stable
sort on descending score would: among equal scores the lower index ranks first. Used by the eval
report (``report``) and by the held-out retrieval (``holdout``), so neither imports the other's
internals.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

__all__ = ["RETRIEVAL_KS", "ROW_CHUNK", "retrieval_recall", "row_chunks", "stable_rank"]

RETRIEVAL_KS = (1, 5, 10)
ROW_CHUNK = 4096  # score-matrix rows computed at a time (bounds memory to chunk × columns)


def row_chunks(n: int) -> Iterator[slice]:
    """Slices of ``ROW_CHUNK`` rows covering ``range(n)``."""
    for start in range(0, n, ROW_CHUNK):
        yield slice(start, min(start + ROW_CHUNK, n))


def stable_rank(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based position of column ``target[i]`` in row ``i`` under a stable descending sort."""
    target_score = np.take_along_axis(scores, target[:, None], axis=1)
    columns = np.arange(scores.shape[1])
    ahead = (scores > target_score) | ((scores == target_score) & (columns < target[:, None]))
    return ahead.sum(axis=1)


def _class_aware_recall(queries: np.ndarray, items: np.ndarray, query_labels: np.ndarray,
                        item_labels: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries with a same-label item among their k most similar items, for every k
    smaller than the number of items (with k ≥ n every query finds one: 1 by construction)."""
    ks = [k for k in ks if k < len(items)]
    ranks = []
    for rows in row_chunks(len(queries)):
        relevant = item_labels[None, :] == query_labels[rows, None]
        answered = relevant.any(axis=1)
        if not answered.all():
            missing = np.unique(query_labels[rows][~answered])
            raise ValueError(f"no relevant item for queries with labels {missing[:5].tolist()}: "
                             "every query label must occur among the retrieved items")
        scores = queries[rows] @ items.T
        best_relevant = np.where(relevant, scores, -np.inf).argmax(axis=1)  # first among ties
        ranks.append(stable_rank(scores, best_relevant))
    rank = np.concatenate(ranks)
    return {k: float((rank < k).mean()) for k in ks}


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, image_labels: np.ndarray,
                     text_labels: np.ndarray, ks: Sequence[int] = RETRIEVAL_KS) -> dict[str, float]:
    """Class-aware recall@k both ways: ``{"i2t_r1": …, "t2i_r1": …}`` for every k smaller than
    the number of candidates of that direction (texts for i2t, images for t2i); a k ≥ n is left
    out (every query would find its match: 1 by construction; ``report.trivial_ks`` lists them).

    A retrieved text (image) is relevant to an image (text) query when their labels are equal;
    every label must occur on both sides (else ``ValueError``).
    """
    image_labels, text_labels = np.asarray(image_labels), np.asarray(text_labels)
    if len(image_emb) != len(image_labels) or len(text_emb) != len(text_labels):
        raise ValueError(f"{len(image_emb)} image embeddings vs {len(image_labels)} labels, "
                         f"{len(text_emb)} text embeddings vs {len(text_labels)} labels")
    i2t = _class_aware_recall(image_emb, text_emb, image_labels, text_labels, ks)
    t2i = _class_aware_recall(text_emb, image_emb, text_labels, image_labels, ks)
    return {**{f"i2t_r{k}": v for k, v in i2t.items()}, **{f"t2i_r{k}": v for k, v in t2i.items()}}
