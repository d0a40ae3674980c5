"""Per-cluster training loss of an epoch: the feedback the ``learnability`` sampler reads.

Every step's per-example CLIP losses (``loop.train_steps(on_example_losses=...)``, taken from the
logits the step computes anyway: no extra forward pass, ~0 FLOPs) are summed by the cluster of
their sample. The batches' sample indices come from replaying the loader's batch composition from
the manifests (``ids``: one list of records per step, in the order the steps train them), so the
loader and the collate function are untouched. Under DDP each rank adds its own batches; the sums
are all-reduced at the end. Written next to ``checkpoint.pt`` as ``cluster_loss.npy``: float64
(2, K), rows (loss sum, draws). A resumed epoch counts only the steps trained after the resume
(the draws row says how many). Online batch selection (JEST / ActiveCLIP) trains a chosen subset
of each super-batch: there the recorder is not used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from dynamics_assets.core.sample.strategies.learnability import FEEDBACK_FILE, ClusterFeedback

__all__ = ["ClusterLossRecorder", "FEEDBACK_FILE"]


class ClusterLossRecorder:
    """Callable for ``train_steps(on_example_losses=...)``: adds step i's losses to the clusters of
    the samples of ``ids``'s i-th batch."""

    def __init__(self, cluster_ids: str | Path, n_clusters: int, ids: Iterator[Sequence[Any]]) -> None:
        self.cluster_of = np.load(cluster_ids, mmap_mode="r")
        self.n_clusters = int(n_clusters)
        self.ids = ids
        self.loss_sum = np.zeros(self.n_clusters)
        self.count = np.zeros(self.n_clusters)

    def __call__(self, losses: torch.Tensor) -> None:
        batch = next(self.ids, None)
        if batch is None or len(batch) != len(losses):
            raise RuntimeError(f"per-cluster loss: the step's {len(losses)} losses do not match the replayed "
                               f"batch of {None if batch is None else len(batch)} samples")
        index = np.fromiter((r.sample_index for r in batch), dtype=np.int64, count=len(batch))
        clusters = np.asarray(self.cluster_of[index], dtype=np.int64)
        keep = clusters >= 0
        values = losses.detach().double().cpu().numpy()
        self.loss_sum += np.bincount(clusters[keep], weights=values[keep], minlength=self.n_clusters)
        self.count += np.bincount(clusters[keep], minlength=self.n_clusters)

    def all_reduce(self) -> None:
        """Sum over ranks (no-op without torch.distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.from_numpy(np.stack([self.loss_sum, self.count]))
            torch.distributed.all_reduce(t)
            self.loss_sum, self.count = t[0].numpy(), t[1].numpy()

    def feedback(self) -> ClusterFeedback:
        return ClusterFeedback(self.loss_sum, self.count)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FEEDBACK_FILE
        self.feedback().save(path)
        return path


def replayed_batches(batches: Any, skip: int = 0) -> Iterator[list[Any]]:
    """The records (sample_index, sample_id) of a ``loader.PairBatches`` pass's batches after the
    first ``skip``, composed from the manifests alone (the same seeded shuffle and batching, no image read)."""
    from dynamics_assets.core.ingest.pool import pool_shards, records
    from dynamics_assets.core.train.loader import ShuffleBatcher, batch_stream

    batcher = ShuffleBatcher(batches.seed, batches.batch_size, batches.buffer_size)
    stream = batch_stream(batcher, records(pool_shards(batches.manifest_dir), batches.indices, batches.counts),
                          keep_last=batches.keep_last)
    for done in range(skip):
        if next(stream, None) is None:
            raise ValueError(f"cannot skip {skip} batches: the pass has {done}")
    yield from stream
