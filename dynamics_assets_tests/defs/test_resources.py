"""The GPU resource: device resolution, the explicit CPU fallback, precision."""
from __future__ import annotations

import pytest
import torch

from dynamics_assets.core.model.devices import GpuUnavailableError, resolve_device
from dynamics_assets.defs.resources import GpuResource

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


@needs_no_gpu
def test_cuda_required_without_gpu_is_a_clear_error():
    with pytest.raises(GpuUnavailableError, match="no GPU"):
        GpuResource(device="cuda", allow_cpu_fallback=False).resolved_device()


@needs_no_gpu
def test_fallback_and_auto_use_the_cpu_in_fp32():
    assert GpuResource(device="cuda", allow_cpu_fallback=True).resolved_device() == "cpu"
    gpu = GpuResource(device="auto", precision="bf16")
    assert gpu.resolved_device() == "cpu" and gpu.resolved_precision() == "fp32"


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="precision"):
        GpuResource(device="cpu", precision="fp8").resolved_precision()
    assert GpuResource(device="cpu").resolved_device() == "cpu"
