"""The command-line surface: the `dg` CLI on this project ([tool.dg] in pyproject.toml), the main
command's options and output switches (without running the pipeline), the progress helper."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest

from dynamics_assets import pipeline
from dynamics_assets.core.io import progress

ROOT = Path(__file__).resolve().parents[1]
DG = Path(sys.executable).parent / "dg"


def _dg(args: list[str], home: Path) -> subprocess.CompletedProcess:
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run([str(DG), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not DG.exists(), reason="dagster-dg-cli not installed (bash scripts/bootstrap.sh)")
def test_dg_check_and_list_defs(tmp_path):
    check = _dg(["check", "defs"], tmp_path / "home")
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    listed = _dg(["list", "defs"], tmp_path / "home")
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    assert "sample_plan" in listed.stdout


def test_arguments():
    args = pipeline.build_parser().parse_args(
        ["--epochs", "epoch-001", "epoch-002", "--recipes", "all", "--skip-existing", "-v"])
    assert args.epochs == ["epoch-001", "epoch-002"] and args.recipes == ["all"]
    assert args.skip_existing and args.verbose and not args.no_progress
    default = pipeline.build_parser().parse_args([])
    assert default.epochs is None and default.recipes is None
    assert not (default.skip_existing or default.verbose or default.no_progress)
    with pytest.raises(SystemExit):
        pipeline.build_parser().parse_args(["--no-such-option"])


def test_main_needs_dagster_home(monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with pytest.raises(SystemExit, match="DAGSTER_HOME"):
        pipeline.main([])


def test_verbose_switches_log_level():
    assert pipeline.run_config(True) == {}
    assert pipeline.run_config(False) == {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


# Run in a fresh interpreter, as the command runs, with the process's real stdout / stderr: the
# step lines and Dagster's console lines pass Dagster's compute-log capture (fd 1 and 2 pointed at a
# file, copied back by `tail -F`), which once lost the STEP_SUCCESS line of a full-suite CI run.
_TINY_JOB = """
import json, sys
import dagster as dg
from dynamics_assets import pipeline

@dg.asset
def _tiny(context) -> dg.MaterializeResult:
    context.log.info("tiny says hello")
    return dg.MaterializeResult(metadata={"ok": 7, "quarantined": 2})

verbose = sys.argv[1] == "1"
pipeline.configure_output(verbose, progress=False)
job = dg.Definitions(assets=[_tiny], jobs=[dg.define_asset_job("tiny", selection=[_tiny])]).resolve_job_def("tiny")
seen = {}
with dg.instance_for_test() as instance:
    result = pipeline.execute(job, instance, verbose=verbose, title="tiny job", seen=seen)
print(json.dumps({"success": result.success, "seen": seen}), flush=True)
"""


# Holds every inotify instance this user may open, so that `tail -F` falls back to polling once a
# second — the state a long test session reached when CI lost the last step's console lines.
_HOLD_INOTIFY = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
held = 0
while libc.inotify_init() >= 0:
    held += 1
print(held, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.parametrize("inotify", ["free", "exhausted"])
def test_step_lines_and_dagster_log_level(verbose, inotify):
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_COMPUTE_LOG_TAIL_WAIT_AFTER_FINISH"}
    hog = None
    if inotify == "exhausted":
        if not sys.platform.startswith("linux"):
            pytest.skip("inotify is Linux's")
        hog = subprocess.Popen([sys.executable, "-c", _HOLD_INOTIFY], stdout=subprocess.PIPE, text=True)
    try:
        if hog is not None:
            assert int(hog.stdout.readline()) >= 0
        proc = subprocess.run([sys.executable, "-c", _TINY_JOB, "1" if verbose else "0"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    assert proc.returncode == 0, proc.stderr[-3000:]
    *lines, last = proc.stdout.strip().splitlines()
    report = json.loads(last)
    assert report["success"] and report["seen"]["_tiny"] == {"ok": 7, "quarantined": 2}
    assert lines[0] == "tiny job" and len(lines) == 2, proc.stdout
    assert lines[1].split()[0] == "_tiny" and " s " in lines[1] and lines[1].rstrip().endswith("ok 7, quarantined 2")
    logged = proc.stderr
    # the run's own events are logged outside the capture; the step's pass through it
    assert ("RUN_START" in logged and "RUN_SUCCESS" in logged) is verbose, logged[-3000:]
    assert ("STEP_SUCCESS" in logged and "tiny says hello" in logged) is verbose, logged[-3000:]


def test_step_lines_go_to_their_own_descriptor():
    out = pipeline.console()
    assert out is sys.stdout or out.fileno() != sys.stdout.fileno()
    assert pipeline.console() is out


@dg.asset
def a_step_with_a_rather_long_name_that_fails():
    raise ValueError("boom")


def test_failed_step_line():
    job = dg.Definitions(assets=[a_step_with_a_rather_long_name_that_fails],
                         jobs=[dg.define_asset_job("j", selection="*")]).resolve_job_def("j")
    out = io.StringIO()
    with dg.instance_for_test() as instance:
        assert not pipeline.execute(job, instance, verbose=False, title="j", out=out).success
    line = out.getvalue().splitlines()[1]
    assert line.startswith("  a_step_with_a_…name_that_fails ")
    assert line.rstrip().endswith("FAILED: ValueError: boom")


def test_key_figures():
    assert pipeline.key_figure("raw_pairs", {"ok": 48210, "quarantined": 1790, "pairs": 50000}) == \
        "48,210 pairs kept, 1,790 quarantined"
    assert pipeline.key_figure("eval_report", {"top1": 0.25, "head": dg.MetadataValue.float(0.5), "tail": 0.125}) == \
        "top-1 0.250, head 0.500, tail 0.125"
    assert pipeline.key_figure("sample_plan", {}) == ""
    assert pipeline.key_figure("reference_model", {"final_loss": 3.5, "reused": False}) == "loss 3.500"
    assert pipeline.key_figure("reference_model", {"steps": 146, "reused": True}) == "146 steps, reused"
    assert pipeline.key_figure("unknown_asset", {"dagster/row_count": 3, "n": 5, "f": 0.5, "s": "x"}) == "n 5, f 0.5"
    assert pipeline.format_seconds(3.21) == "3.2 s" and pipeline.format_seconds(42) == "42 s"
    assert pipeline.format_seconds(125) == "2 min 05 s"


def test_quiet_hides_dagster_warnings(monkeypatch):
    monkeypatch.setattr(progress, "_switch", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline.configure_output(verbose=False)
        warnings.warn("x", dg.BetaWarning)
        warnings.warn("x", dg.PreviewWarning)
        warnings.warn("Function `f` is deprecated and will be removed in 2.0.", DeprecationWarning)
        warnings.warn("ours", UserWarning)
    assert [str(w.message) for w in caught] == ["ours"]
    assert not pipeline._drop_random_init_notice(logging.makeLogRecord(
        {"msg": "No pretrained weights loaded for model 'dynamics-tiny-32'. Model initialized randomly."}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline.configure_output(verbose=True)
        warnings.warn("x", dg.BetaWarning)
    assert len(caught) == 1


def test_progress_switch(monkeypatch, capsys):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr(progress, "_switch", None)
    assert progress.bar("quiet") is None  # library default: silent
    pipeline.configure_output(verbose=False, progress=False)
    assert progress.bar("off") is None
    monkeypatch.setenv(progress.ENV, "always")
    monkeypatch.setattr(progress, "_switch", None)
    pipeline.configure_output(verbose=False)  # the caller's DYNAMICS_PROGRESS wins
    tick = progress.bar("demo", "step")
    assert tick is not None
    for i in range(1, 4):
        progress.offset(tick, 0, 3)(i, 99)
    assert "demo" in capsys.readouterr().err
