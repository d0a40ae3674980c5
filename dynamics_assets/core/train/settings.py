"""The one training configuration: every setting a user chooses for training a recipe's epochs.

``TrainSettings`` is what the Dagster run config (``checkpoint``'s config, generated from these
fields), a recipe's ``training:`` overrides in experiments.yaml and ``EpochJob`` (which adds the
paths and the epoch) all share; the training loop derives its step schedule from it
(``train.epoch.train_config``). Importable without torch.

``resolve_training`` is THE resolution of the settings that train a recipe's epoch (run config,
then the recipe's overrides, the batch rule for the pool size when neither sets a batch, the
recipe's seed offset, the schedule's span): the ``checkpoint`` asset trains with it, and the
webdataset export's open_clip_train command and Divide and Contrast read the same settings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import AbstractSet as Set, Any, Mapping, Optional

SELECTION_METHODS = ("jest", "activeclip")  # online batch selection (train.online_selection)
REFERENCES = ("pool", "curated")  # what online selection's reference model was trained on
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
    # with selection: the reference model that scores the super-batches: 'pool' (reference_model,
    # trained on the raw pool) or 'curated' (curated_model, trained on the curated set; its training
    # FLOPs are counted once in the recipe's compute: CheckpointRecord.curation_flops)
    reference: str = "pool"
    filter_ratio: float = FILTER_RATIO
    n_chunks: int = N_CHUNKS
    dnc_experts: int = 0  # Divide and Contrast (train.divide_contrast): K super-cluster experts; 0 = off
    dnc_weight: float = 1.0  # with dnc_experts: λ of the student's feature distillation loss

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
        if self.reference not in REFERENCES:
            problems.append(f"reference must be one of {REFERENCES} (got {self.reference!r})")
        elif self.reference != "pool" and self.selection is None:
            problems.append(f"reference {self.reference!r} is online selection's reference model: it needs "
                            f"selection ({' or '.join(SELECTION_METHODS)})")
        if not 0.0 < self.filter_ratio < 1.0:
            problems.append(f"filter_ratio must lie in (0, 1) (got {self.filter_ratio})")
        if self.n_chunks < 1:
            problems.append(f"n_chunks must be ≥ 1 (got {self.n_chunks})")
        if self.dnc_experts == 1 or self.dnc_experts < 0:
            problems.append(f"dnc_experts must be 0 (off) or ≥ 2 (got {self.dnc_experts})")
        if self.dnc_experts and self.selection is not None:
            problems.append("dnc_experts and selection cannot be combined")
        if not self.dnc_weight >= 0:
            problems.append(f"dnc_weight must be ≥ 0 (got {self.dnc_weight})")
        if problems:
            raise ValueError("training settings: " + "; ".join(problems))

    def with_overrides(self, overrides: Mapping[str, Any], *, source: str = "overrides") -> "TrainSettings":
        """These settings with ``overrides`` applied (e.g. a recipe's ``training:`` block); an unknown
        key is refused, naming the known ones, and a value outside its range naming ``source``."""
        known = {f.name for f in dataclasses.fields(TrainSettings)}
        if unknown := sorted(set(overrides) - known):
            raise ValueError(f"{source}: unknown training setting(s) {unknown}; known: {sorted(known)}")
        try:
            return dataclasses.replace(self, **dict(overrides))
        except ValueError as e:  # a value outside its range: say whose
            raise ValueError(f"{source}: {e}") from None

    def settings(self) -> "TrainSettings":
        """The bare settings (an ``EpochJob`` without its paths)."""
        return TrainSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainSettings)})


def resolve_training(run_config: Mapping[str, Any] | None, recipe_training: Mapping[str, Any] | None,
                     recipe_seed: int, pool_size: int, set_fields: Optional[Set[str]] = None, *,
                     default_epochs: Optional[int] = None, recipe_name: str = "recipe") -> TrainSettings:
    """The settings that train a recipe's epochs on a pool of ``pool_size`` pairs.

    1. ``run_config``: the run's values (e.g. the ``checkpoint`` asset's config dump; None or {}:
       the defaults); ``set_fields``: which of them the user set (Dagster's ``model_fields_set``;
       None: every key of ``run_config``);
    2. ``recipe_training``: the recipe's ``training:`` overrides (an unknown key is refused);
    3. ``batch_size`` = ``batch_for(pool_size)`` unless the run config or the recipe sets it;
    4. ``seed`` = the run's seed + 1000 × ``recipe_seed`` (each recipe seed its own init and order);
    5. ``n_epochs`` = ``default_epochs`` when left empty (the schedule spans every epoch partition).
    """
    base = TrainSettings(**dict(run_config or {}))
    recipe_training = dict(recipe_training or {})
    settings = base.with_overrides(recipe_training, source=f"recipe {recipe_name}")
    changes: dict[str, Any] = {"seed": settings.seed + 1000 * int(recipe_seed)}
    set_fields = set(run_config or {}) if set_fields is None else set(set_fields)
    if "batch_size" not in set_fields and "batch_size" not in recipe_training:
        changes["batch_size"] = batch_for(pool_size)  # the rule for this pool size
    if settings.n_epochs is None and default_epochs is not None:
        changes["n_epochs"] = int(default_epochs)
    return dataclasses.replace(settings, **changes)


# ---------------------------------------------------------------------------------------------
# Defaults that fit the pool (used when a setting is left unset)
# ---------------------------------------------------------------------------------------------

MAX_BATCH = 256
MIN_BATCH = 16
REFERENCE_MIN_STEPS = 140  # what the default 20k-pair pool gets in 2 epochs of 256


def batch_for(n_pairs: int) -> int:
    """Batch size for a pool of ``n_pairs``: the largest power of two ≤ n/32 (at least 32 batches
    per epoch), between 16 and 256. 20,000 pairs → 256; 782 → 16."""
    target = max(1, n_pairs // 32)
    power = 1 << (target.bit_length() - 1)
    return max(MIN_BATCH, min(MAX_BATCH, power))


def reference_epochs_for(n_pairs: int, batch_size: int) -> int:
    """Epochs of the reference model so that it takes at least ``REFERENCE_MIN_STEPS`` optimiser
    steps (and at least 2 epochs): 20,000 pairs at 256 → 2 epochs (146 steps); 782 at 16 → 3."""
    per_epoch = max(1, n_pairs // batch_size)
    return max(2, -(-REFERENCE_MIN_STEPS // per_epoch))


def near_chance(final_loss: float, batch_size: int) -> bool:
    """A CLIP loss still within 10% of chance (ln of the batch size): the model learnt nothing."""
    import math

    return not final_loss < 0.9 * math.log(max(2, batch_size))
