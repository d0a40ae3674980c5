"""Shared fixtures: tiny run configs and resources on a temporary data root."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER") and \
        int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1):
    # `scripts/test.sh` runs one pytest-xdist worker per core: each worker, and the processes its tests
    # start, use one thread, so the workers do not oversubscribe the cores. Set before torch is imported.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource

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
    return {"storage": StorageResource(root=str(tmp_path / "data")), "gpu": GpuResource(device="cpu"), "compute": ComputeResource()}


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


# ---------------------------------------------------------------------------------------------
# The `slow` marker: `pytest -m "not slow"` is the fast set, CI runs everything. Chosen from
# `pytest --durations=120` of a whole-suite run on the 2-core box (December 2026, 21 min 10 s):
# whole files whose module fixtures are heavy, and every other test that took ≥ 3 s (setup + call).
# Re-measure with `--durations` when a test grows.
# ---------------------------------------------------------------------------------------------
SLOW_FILES = (
    "dynamics_assets_tests/e2e/test_ui.py",
    "dynamics_assets_tests/defs/train/test_training_assets.py",
    "dynamics_assets_tests/core/engine/test_ray_engine.py",
    "dynamics_assets_tests/defs/test_recuration.py",
    "dynamics_assets_tests/defs/ingest/test_precomputed_pools.py",
    "dynamics_assets_tests/core/train/test_multinode.py",
    "dynamics_assets_tests/test_postgres.py",
    "dynamics_assets_tests/defs/test_pipeline_assets.py",
    "dynamics_assets_tests/defs/train/test_divide_contrast_assets.py",
    "dynamics_assets_tests/defs/sample/test_feedback_lineage.py",
    "dynamics_assets_tests/defs/sample/test_curated_dfn.py",
    "dynamics_assets_tests/core/train/test_divide_contrast.py",
)
SLOW_TESTS = frozenset({
    "dynamics_assets_tests/core/evaluate/test_design.py::test_design_on_a_users_pool_without_ground_truth_leaves_the_oracle_out",
    "dynamics_assets_tests/core/evaluate/test_design.py::test_design_runs_resumes_and_reports_controls_and_gate_first",
    "dynamics_assets_tests/core/evaluate/test_design.py::test_the_comparison_design_is_a_dagster_asset",
    "dynamics_assets_tests/core/train/test_epoch_training.py::test_ddp_two_processes_split_the_plan",
    "dynamics_assets_tests/core/train/test_epoch_training.py::test_every_checkpoint_version_is_an_open_clip_model_folder",
    "dynamics_assets_tests/core/train/test_epoch_training.py::test_worker_processes_train_the_same_weights_and_resume",
    "dynamics_assets_tests/core/evaluate/test_statistics.py::test_interval_coverage_at_the_design_seed_counts",
    "dynamics_assets_tests/core/train/test_training.py::test_reference_model_resumes_after_a_crash_and_is_open_clip_loadable",
    "dynamics_assets_tests/core/export/test_webdataset_export.py::test_open_clip_train_reads_the_plan_as_the_manifest_says",
    "dynamics_assets_tests/faults/test_crashes_and_concurrency.py::test_sigkill_during_the_embedding",
    "dynamics_assets_tests/faults/test_lineage.py::test_an_interrupted_epoch_does_not_resume_on_another_plan",
    "dynamics_assets_tests/faults/test_lineage.py::test_partial_materialisation_is_refused_then_a_full_recuration_succeeds",
    "dynamics_assets_tests/faults/test_paths_uris_secrets.py::test_data_root_with_apostrophe_spaces_and_non_ascii_runs_the_whole_lineage",
    "dynamics_assets_tests/faults/test_paths_uris_secrets.py::test_private_local_ray_listens_on_loopback_only",
    "dynamics_assets_tests/faults/test_plans_training_settings.py::test_sigkill_mid_epoch_resumes_to_the_same_weights",
    "dynamics_assets_tests/faults/test_plans_training_settings.py::test_step_checkpoint_of_another_order_is_not_resumed",
    "dynamics_assets_tests/faults/test_recipe_settings.py::test_lineage_filled_settings_are_not_read_when_the_code_location_loads",
    "dynamics_assets_tests/faults/test_recipe_settings.py::test_out_of_range_sampler_setting_is_refused_when_the_code_location_loads",
    "dynamics_assets_tests/defs/train/test_checks.py::test_checks_pass_in_the_materialising_runs",
    "dynamics_assets_tests/test_cli.py::test_dg_check_and_list_defs",
    "dynamics_assets_tests/test_cli.py::test_step_lines_and_dagster_log_level",
    "dynamics_assets_tests/defs/embed/test_pool_encoder.py::test_eval_report_uses_the_pools_encoder_not_the_reference_model",
})


# Seconds each of the heaviest files took (the same --durations run, per file). They are collected
# first, heaviest first, so the two xdist workers (scripts/test.sh, --dist loadfile) start on them and
# the light files fill in at the end, instead of one worker finishing the UI test alone.
FILE_SECONDS = {
    "dynamics_assets_tests/e2e/test_ui.py": 210, "dynamics_assets_tests/defs/ingest/test_precomputed_pools.py": 146,
    "dynamics_assets_tests/core/train/test_multinode.py": 98, "dynamics_assets_tests/defs/test_pipeline_assets.py": 85,
    "dynamics_assets_tests/defs/train/test_training_assets.py": 74, "dynamics_assets_tests/core/engine/test_ray_engine.py": 60,
    "dynamics_assets_tests/core/export/test_webdataset_export.py": 55, "dynamics_assets_tests/defs/test_recuration.py": 54,
    "dynamics_assets_tests/faults/test_plans_training_settings.py": 51, "dynamics_assets_tests/test_postgres.py": 47,
    "dynamics_assets_tests/core/train/test_epoch_training.py": 40, "dynamics_assets_tests/test_cli.py": 35,
    "dynamics_assets_tests/defs/train/test_divide_contrast_assets.py": 31,
}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        base = item.nodeid.split("[")[0]
        if base.startswith(SLOW_FILES) or base in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    # heaviest files first; a stable sort keeps every file's own order (its module fixtures, its steps)
    items.sort(key=lambda item: -FILE_SECONDS.get(item.nodeid.split("::")[0], 0))
