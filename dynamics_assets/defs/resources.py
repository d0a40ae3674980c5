"""Resources: where artefacts live, and which device trains / embeds."""
from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from dynamics_assets.core.io.layout import Layout, default_data_root


class StorageResource(dg.ConfigurableResource):
    """The data root: raw shards under ``raw/``, every artefact under ``artifacts/<stage>/``."""

    root: str = "data"

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.root).resolve())


class GpuResource(dg.ConfigurableResource):
    """The accelerator for embedding and training steps.

    device: auto | cuda | cuda:N | cpu. ``cuda`` without a GPU fails unless
    ``allow_cpu_fallback``. precision: bf16 | fp16 | fp32 (mixed precision on CUDA only).
    num_processes > 1 runs training under torchrun (DDP). num_workers: DataLoader worker processes
    that decode and preprocess images for training and embedding (0 = in the step's process); the
    sample order does not depend on it.
    """

    device: str = "auto"
    precision: str = "bf16"
    num_processes: int = 1
    num_workers: int = 0
    allow_cpu_fallback: bool = True

    def resolved_device(self) -> str:
        from dynamics_assets.core.model.devices import resolve_device  # torch: imported on use only

        return resolve_device(self.device, allow_cpu_fallback=self.allow_cpu_fallback)

    def resolved_precision(self) -> str:
        from dynamics_assets.core.model.devices import resolve_precision

        return resolve_precision(self.precision, self.resolved_device())


def default_resources() -> dict:
    from dynamics_assets.defs.tracking import MlflowResource

    root = str(default_data_root())
    return {
        # Assets hand each other small records (paths, counts); the artefacts themselves are
        # files under the storage root. Records persist in the instance's storage folder.
        "io_manager": dg.FilesystemIOManager(),
        "storage": StorageResource(root=root),
        # A tracking URI may carry credentials: it reaches the resource only as an EnvVar, which the
        # UI shows by name, never by value.
        "mlflow": MlflowResource(data_root=root, tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI")
                                 if os.environ.get("MLFLOW_TRACKING_URI") else None),
        "gpu": GpuResource(device=os.environ.get("DYNAMICS_DEVICE", "auto")),
    }
