"""Resources: where artefacts live, which device trains / embeds, and where per-shard work runs."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import dagster as dg

from dynamics_assets.core.io.layout import Layout, default_data_root


class StorageResource(dg.ConfigurableResource):
    """The data root: raw shards under ``raw/``, every artefact under ``artifacts/<stage>/``."""

    root: str = "data"

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.root).resolve())


ENGINES = ("local", "ray")


class ComputeResource(dg.ConfigurableResource):
    """Where the per-shard work of the manifest, embedding, scoring and assignment steps runs
    (``core.engine``), apart from the accelerator (``GpuResource``): the manifest step is CPU work.
    ``engine: local`` in the step's process, ``engine: ray`` on Ray — a private
    local Ray started by the step and sized by ``num_cpus`` (empty: every CPU) when ``address`` is
    empty, else the cluster at ``address`` (``ray://host:10001`` or ``auto``; give it as an EnvVar
    when it holds credentials: it is never logged). Both engines write byte-identical artefacts.

    Embedding runs on an actor pool: ``num_actors`` actors (empty: CPUs / ``cpus_per_actor``), each
    loading the encoder once and holding ``num_gpus_per_actor`` GPUs (set 1 with a CUDA device).
    ``max_retries``: Ray's retries of a task whose worker died, before it becomes that shard's error.
    """

    engine: str = "local"
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    num_actors: Optional[int] = None
    max_retries: int = 1

    @contextlib.contextmanager
    def engine_for(self, log: Any = None) -> Iterator[Any]:
        """The ``core.engine`` for one step (a Ray engine is started here and closed after it)."""
        if self.engine not in ENGINES:
            raise dg.Failure(f"compute.engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "local":
            from dynamics_assets.core.engine.local import LocalEngine

            yield LocalEngine()
            return
        from dynamics_assets.core.engine.ray import RayEngine  # ray itself is imported when started

        engine = RayEngine(self.address or None, num_cpus=self.num_cpus, cpus_per_actor=self.cpus_per_actor,
                           num_gpus_per_actor=self.num_gpus_per_actor, num_actors=self.num_actors,
                           max_retries=self.max_retries)
        if log is not None:
            log.info(f"engine: {engine!r}")  # the repr never shows the address
        with engine:
            yield engine


class GpuResource(dg.ConfigurableResource):
    """The accelerator for embedding and training steps.

    device: auto | cuda | cuda:N | cpu. ``cuda`` without a GPU fails unless
    ``allow_cpu_fallback``. precision: bf16 | fp16 | fp32 (mixed precision on CUDA only).
    num_processes > 1 runs training under torchrun (DDP). num_workers: DataLoader worker processes
    that decode and preprocess images for training and embedding (0 = in the step's process); the
    sample order does not depend on it. Where per-shard work runs is the ``compute`` resource.

    num_nodes > 1 trains on that many nodes of a Ray cluster (``ray_address``; empty: RAY_ADDRESS,
    else a local Ray), ``num_processes`` per node: one torchrun launcher per node, started by a Ray
    task pinned to it, meeting at a c10d rendezvous on ``rdzv_endpoint`` (host:port; empty: the
    first node's address, port 29400). The checkpoint root must be storage every node reaches.
    """

    device: str = "auto"
    precision: str = "bf16"
    num_processes: int = 1
    num_workers: int = 0
    num_nodes: int = 1
    rdzv_endpoint: Optional[str] = None
    ray_address: Optional[str] = None
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
        "compute": _compute_from_env(),
    }


def _compute_from_env() -> ComputeResource:
    """``DYNAMICS_ENGINE`` (local | ray; default local), ``DYNAMICS_RAY_ADDRESS`` (read as an EnvVar:
    shown by name only), ``DYNAMICS_RAY_CPUS``."""
    cpus = os.environ.get("DYNAMICS_RAY_CPUS")
    return ComputeResource(
        engine=os.environ.get("DYNAMICS_ENGINE", "local"),
        address=dg.EnvVar("DYNAMICS_RAY_ADDRESS") if os.environ.get("DYNAMICS_RAY_ADDRESS") else None,
        num_cpus=int(cpus) if cpus else None,
    )
