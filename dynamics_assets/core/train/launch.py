"""Run one epoch under torchrun (DDP: one process per GPU, gloo on CPU) from any caller.

The job travels as JSON (``EpochJob.from_json``); rank 0 writes the metrics file the caller reads.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from dynamics_assets.core.train.epoch import EpochJob


class LaunchError(RuntimeError):
    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def run_under_torchrun(job: EpochJob, nproc: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        job_path, metrics_path = Path(tmp) / "job.json", Path(tmp) / "metrics.json"
        job_path.write_text(json.dumps(asdict(job)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "dynamics_assets.core.train.epoch", str(job_path), str(metrics_path)]
        log("launching: " + " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LaunchError(f"torchrun exited with {proc.returncode}", proc.stderr[-4000:])
        return json.loads(metrics_path.read_text())
