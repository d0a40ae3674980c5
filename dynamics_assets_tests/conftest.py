"""Shared fixtures: tiny run configs and resources on a temporary data root."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from dynamics_assets.defs.resources import GpuResource, StorageResource

TINY_RUN_CONFIG = {
    "ops": {
        "raw_shards": {"config": {"pairs": 480, "samples_per_shard": 160, "eval_per_concept": 1, "seed": 3}},
        "reference_model": {"config": {"epochs": 1, "batch_size": 64}},
        "pair_embeddings": {"config": {"batch_size": 128}},
        "clusters": {"config": {"k": 8, "sample_size": 400, "niter": 5, "merge_threshold": 0.95}},
    }
}


@pytest.fixture
def resources(tmp_path):
    return {"storage": StorageResource(root=str(tmp_path / "data")), "gpu": GpuResource(device="cpu")}


# ---------------------------------------------------------------------------------------------
# The fault suite's table (dynamics_assets_tests/faults/ and the crash / concurrency probes elsewhere)
# ---------------------------------------------------------------------------------------------

_ROWS: list["Row"] = []


@dataclass(frozen=True)
class Row:
    area: str
    probe: str
    outcome: str


class Recorder:
    def __init__(self, area: str, probe: str) -> None:
        self.area, self.probe = area, probe

    def __call__(self, outcome: str) -> None:
        """Record the outcome the probe just asserted (call it after the asserts)."""
        _ROWS.append(Row(self.area, self.probe, outcome))


@pytest.fixture
def record(request) -> Recorder:
    """``record("quarantined: link_member")`` after a probe's asserts; area = the test module."""
    area = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", " ")
    doc = (request.function.__doc__ or request.node.name).strip().splitlines()[0]
    probe = doc + (f" [{request.node.callspec.id}]" if hasattr(request.node, "callspec") else "")
    return Recorder(area, probe)


def pytest_sessionfinish(session, exitstatus) -> None:
    if not _ROWS:
        return
    cache = getattr(session.config, "cache", None)
    default = (Path(cache.makedir("faults")) if cache is not None else Path(tempfile.gettempdir())) / "faults.md"
    target = Path(os.environ.get("DYNAMICS_FAULT_TABLE") or default)
    lines = ["| area | probe | outcome |", "|---|---|---|"]
    for r in sorted(_ROWS, key=lambda r: (r.area, r.probe)):
        lines.append(f"| {r.area} | {r.probe} | {r.outcome} |".replace("\n", " "))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + f"\n\n{len(_ROWS)} probes.\n")
