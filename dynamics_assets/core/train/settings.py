"""The one training configuration: every setting a user chooses for training a recipe's epochs.

``TrainSettings`` is what the Dagster run config (``checkpoint``'s config, generated from these
fields), a recipe's ``training:`` overrides in experiments.yaml and ``EpochJob`` (which adds the
paths and the epoch) all share; the training loop derives its step schedule from it
(``train.epoch.train_config``). Importable without torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

SELECTION_METHODS = ("jest", "activeclip")  # online batch selection (train.online_selection)
FILTER_RATIO = 0.8  # with selection: the share of each super-batch left out
N_CHUNKS = 16  # JEST's blocked sampling


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    model_name: str = "dynamics-tiny-32"
    init_pretrained: Optional[str] = None  # an open_clip tag or a local checkpoint for epoch 1
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1
    grad_clip_norm: float = 1.0
    batch_size: int = 256  # per process
    buffer_size: int = 4096  # the loader's seeded shuffle buffer
    seed: int = 0
    n_epochs: Optional[int] = None  # the cosine schedule's span in epochs (None: every epoch partition)
    checkpoint_every_steps: int = 20
    selection: Optional[str] = None  # online batch selection: None (off), 'jest' or 'activeclip'
    filter_ratio: float = FILTER_RATIO
    n_chunks: int = N_CHUNKS

    def __post_init__(self) -> None:
        problems = []
        if not self.lr > 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if not 0.0 <= self.warmup_fraction < 1.0:
            problems.append(f"warmup_fraction must lie in [0, 1) (got {self.warmup_fraction})")
        if self.batch_size < 2:
            problems.append(f"batch_size must be ≥ 2 for a contrastive loss (got {self.batch_size})")
        if self.buffer_size < 1:
            problems.append(f"buffer_size must be ≥ 1 (got {self.buffer_size})")
        if self.n_epochs is not None and self.n_epochs < 1:
            problems.append(f"n_epochs must be ≥ 1 (got {self.n_epochs})")
        if self.selection is not None and self.selection not in SELECTION_METHODS:
            problems.append(f"selection must be one of {SELECTION_METHODS} or empty (got {self.selection!r})")
        if not 0.0 < self.filter_ratio < 1.0:
            problems.append(f"filter_ratio must lie in (0, 1) (got {self.filter_ratio})")
        if self.n_chunks < 1:
            problems.append(f"n_chunks must be ≥ 1 (got {self.n_chunks})")
        if problems:
            raise ValueError("training settings: " + "; ".join(problems))

    def with_overrides(self, overrides: Mapping[str, Any], *, source: str = "overrides") -> "TrainSettings":
        """These settings with ``overrides`` applied (e.g. a recipe's ``training:`` block); an unknown
        key is refused, naming the known ones."""
        known = {f.name for f in dataclasses.fields(TrainSettings)}
        if unknown := sorted(set(overrides) - known):
            raise ValueError(f"{source}: unknown training setting(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **dict(overrides))

    def settings(self) -> "TrainSettings":
        """The bare settings (an ``EpochJob`` without its paths)."""
        return TrainSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainSettings)})
