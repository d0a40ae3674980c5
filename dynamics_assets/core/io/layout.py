"""Where artefacts live under the data root (``DYNAMICS_DATA_DIR``, default ``./data``).

Every stage writes files (parquet / .npy / open_clip checkpoints) under
``<root>/artifacts/<stage>/``; Dagster assets pass *paths*, never whole pools, between steps.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_data_root() -> Path:
    return Path(os.environ.get("DYNAMICS_DATA_DIR", "data")).resolve()


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def default(cls) -> "Layout":
        return cls(default_data_root())

    @property
    def raw_shards(self) -> Path:  # webdataset tar shards of the training pool
        return self.root / "raw" / "shards"

    @property
    def raw_eval(self) -> Path:  # held-out evaluation set (tar shards + concepts.parquet)
        return self.root / "raw" / "eval"

    def artifact(self, *parts: str) -> Path:
        return self.root.joinpath("artifacts", *parts)
