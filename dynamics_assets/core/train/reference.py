"""The reference model trained on the pool's pairs (the ``reference_model`` step's core) and the
training FLOPs of a model that saw a number of samples.

``train_on_pool`` resolves the batch and epochs from the pool size when left empty
(``settings.batch_for``, ``settings.reference_epochs_for``) and trains as a new version of the
artefact that starts from links to the current one (an unchanged pool and settings reuse the
checkpoint; a crash keeps the staging folder and its step checkpoints, and the next run resumes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dynamics_assets.core.records import PoolManifest


def training_flops(model_name: str, samples_seen: int) -> int:
    """≈ 3 × forward FLOPs of one pair × samples seen (``model.flops.train_flops``)."""
    import open_clip

    from dynamics_assets.core.model.clip import create_model
    from dynamics_assets.core.model.flops import forward_flops_per_pair, train_flops

    model, _, _ = create_model(model_name)
    cfg = open_clip.get_model_config(model_name)
    context = cfg.get("text_cfg", {}).get("context_length", 77)
    return int(train_flops(samples_seen, forward_flops_per_pair(model, cfg["vision_cfg"]["image_size"], context)))


@dataclass(frozen=True)
class PoolReference:
    checkpoint: Path
    metrics: dict[str, Any]
    epochs: int
    batch_size: int
    flops: float

    def facts(self, model_name: str) -> dict[str, Any]:
        """The step's metadata (``checkpoint`` a ``Path``), the trainer's metrics last."""
        return {"checkpoint": self.checkpoint, "model_name": model_name, "epochs": self.epochs,
                "batch_size": self.batch_size, "flops": self.flops,
                **{k: v for k, v in self.metrics.items() if isinstance(v, (int, float, str))}}


def train_on_pool(raw_pairs: PoolManifest, root: str | Path, *, model_name: str, epochs: Optional[int],
                  batch_size: Optional[int], seed: int, device: str, retrain: bool) -> PoolReference:
    """The reference model trained on every ok pair of the pool (``loop.train_reference_model``),
    committed under ``root`` with the manifest as its ref."""
    from dynamics_assets.core.io.versions import Artefact
    from dynamics_assets.core.train.loop import train_reference_model
    from dynamics_assets.core.train.settings import TrainSettings, batch_for, reference_epochs_for

    batch = batch_size or batch_for(raw_pairs.n_ok)
    epochs = epochs or reference_epochs_for(raw_pairs.n_ok, batch)
    artefact = Artefact(root)
    with artefact.write(base=artefact.current(), resume=True, keep_on_error=True,
                        refs={"manifest": raw_pairs.manifest_dir}) as staging:
        m = train_reference_model(
            raw_pairs.manifest_dir, raw_pairs.shards_dir, staging / f"{model_name}.pt",
            settings=TrainSettings(model_name=model_name, batch_size=batch, seed=seed),
            epochs=epochs, device=device, reuse=not retrain)
    out = staging.version_dir / f"{model_name}.pt"
    return PoolReference(out, m, epochs, batch, float(training_flops(model_name, int(m["samples_seen"]))))


def learning_warnings(final_loss: float, batch_size: int) -> list[str]:
    """A reference model whose loss ended near chance learnt nothing: said, with what to do."""
    from dynamics_assets.core.train.settings import near_chance

    if not near_chance(final_loss, batch_size):
        return []
    return [f"the reference model ended at loss {final_loss:.3f}, within 10% of chance "
            f"(ln {batch_size} = {math.log(batch_size):.3f}): it learnt nothing, and the embeddings "
            "and clusters made with it will not follow the content; train longer or configure a "
            "pretrained encoder for pair_embeddings"]
