"""Which encoder embeds a pool: a small record, importable without torch or open_clip."""
from __future__ import annotations

from dataclasses import dataclass

from dynamics_assets.core.model.configs import check_model_name  # open_clip: imported on first check only

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class EncoderSpec:
    """Which model and weights embed the data.

    ``pretrained``: an open_clip tag (see ``open_clip.list_pretrained_tags_by_model``), a path to a
    checkpoint file, or ``None`` (random initialisation seeded with ``INIT_SEED``).
    ``precision``: autocast dtype on CUDA; CPU always computes in fp32.
    """

    model_name: str
    pretrained: str | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_model_name(self.model_name)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} not in {PRECISIONS}")
