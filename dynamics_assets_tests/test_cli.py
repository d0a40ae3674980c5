"""The command-line surface: the `dg` CLI on this project ([tool.dg] in pyproject.toml), the main
command's options and output switches (without running the pipeline), the progress helper."""
from __future__ import annotations

import io
import json
import logging
import os
import re
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


def test_key_figures_of_a_pool_that_ships_embeddings():
    """Issue 18: raw_shards, reference_model and pair_embeddings had empty lines for such a pool."""
    assert pipeline.key_figure("raw_shards", {"layout": "datacomp", "parts": 12, "folder": "/p"}) == \
        "DataComp pool, 12 parts"
    assert pipeline.key_figure("raw_shards", {"layout": "laion", "parts": 1}) == "LAION / clip-retrieval pool, 1 part"
    assert pipeline.key_figure("raw_shards", {"num_shards": 3, "bytes": 2**21}) == "3 shards, 2 MiB"
    skipped = {"skipped": "the pool ships its embeddings and has no images to train on"}
    assert pipeline.key_figure("reference_model", skipped, {"raw_pairs": {"embedding": "b32", "dim": 512}}) == \
        "not trained: the pool ships its embeddings (b32)"
    assert pipeline.key_figure("reference_model", skipped, {"raw_pairs": {"embedding": "None", "dim": 768}}) == \
        "not trained: the pool ships its embeddings (768-d)"
    assert pipeline.key_figure("pair_embeddings", {
        "embeddings_dir": dg.MetadataValue.path("/e"), "encoder": "ViT-B-32", "dim": 512,
        "source": "precomputed (shipped with the pool)", "dagster/row_count": 3000}) == \
        "3,000 embeddings shipped by the pool (ViT-B-32, 512-d)"
    assert pipeline.key_figure("pair_embeddings", {"pairs_embedded": 40, "invalid_rows": 0}) == \
        "40 pairs embedded, 0 invalid rows"


def test_the_summary_names_the_exports_the_model_folder_and_the_training_command(tmp_path):
    """Issue 18: the main command never printed where the exports are, nor the open_clip_train
    command. Assets recording the metadata the real ones record (defs/train, defs/export) run
    through ``execute``; the summary is built from what the step reporter collected."""
    model_dir, export_dir = tmp_path / "checkpoint" / "v1", tmp_path / "export" / "v2"
    command = f'python -m open_clip_train.main --dataset-type webdataset --train-data "{export_dir}/00000.tar"'

    @dg.asset(name="checkpoint")
    def checkpoint_(context):
        context.add_output_metadata({"checkpoint": dg.MetadataValue.path(str(model_dir / "checkpoint.pt")),
                                     "model_dir": dg.MetadataValue.path(str(model_dir)), "final_loss": 2.0})

    @dg.asset(name="webdataset_export")
    def export_(context):
        context.add_output_metadata({"samples": 389, "shards": 1, "export_dir": dg.MetadataValue.path(str(export_dir)),
                                     "command": dg.MetadataValue.md(f"```bash\n{command}\n```")})

    @dg.asset(name="datacomp_subset")
    def subset_(context):
        context.add_output_metadata({"subset": dg.MetadataValue.path(str(tmp_path / "subset.npy")), "rows": 389})

    job = dg.Definitions(assets=[checkpoint_, export_, subset_],
                         jobs=[dg.define_asset_job("j", selection="*")]).resolve_job_def("j")
    seen: dict = {}
    with dg.instance_for_test() as instance:
        assert pipeline.execute(job, instance, verbose=False, title="j", out=io.StringIO(), seen=seen).success
    lines = pipeline.summary_lines(seen, tmp_path)
    assert f"  model:       {model_dir} (open_clip: --model local-dir:{model_dir})" in lines
    assert f"  webdataset:  {export_dir} (389 samples, 1 shard)" in lines
    assert f"  train it:    {command}" in lines
    assert f"  subset:      {tmp_path / 'subset.npy'} (DataComp's resharder: --subset-file)" in lines
    # a checkpoint without a model folder (older metadata), no export run (--no-export): nothing invented
    assert pipeline.export_lines({"checkpoint": {"checkpoint": "/c.pt"}}) == []


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


# ---------------------------------------------------------------------------------------------
# Every input checked before any work (issue 17, item 8)
# ---------------------------------------------------------------------------------------------


def _png(rgb) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def eval_folder(root: Path, classes=("cat", "dog"), per_class: int = 2) -> Path:
    """A small valid ImageFolder eval set."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(_png((40 * c, 10 * i, 100)))
    return root


def run_command(args: list[str], tmp_path: Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """The main command in a fresh interpreter on an empty instance and data root; its wall time."""
    import time

    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if k != "DYNAMICS_EPOCHS"}
    env.update(DAGSTER_HOME=str(home), DYNAMICS_DATA_DIR=str(data), NO_COLOR="1")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dynamics_assets.pipeline", "--no-progress", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - started


def test_a_wrong_eval_is_refused_before_any_run(tmp_path):
    """The command with an eval set that does not exist exits 2 within seconds, naming it; no run
    was started (the instance holds nothing but its config, the data root was never made)."""
    source = tmp_path / "shards"
    source.mkdir()
    proc, seconds = run_command(["--source", str(source), "--eval", str(tmp_path / "no-such-set")], tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == \
        f"refused before any work: --eval: eval set {tmp_path / 'no-such-set'} does not exist"
    assert "curate_pool" not in proc.stdout
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["dagster.yaml"]
    assert not (tmp_path / "data").exists()
    assert seconds < 30, seconds


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "-1"], "argument --epochs: '-1': the number of epochs must be an integer in [1, 365]"),
    (["--epochs", "abc"], "argument --epochs: 'abc' is neither a number of epochs N ≥ 1"),
    (["--epochs", "0"], "argument --epochs: '0': the number of epochs must be an integer in [1, 365]"),
    (["--epochs", "366"], "argument --epochs: '366': the number of epochs must be an integer in [1, 365]"),
    (["--epochs", "epoch-1"], "argument --epochs: 'epoch-1' is neither"),
])
def test_epochs_is_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        pipeline.build_parser().parse_args(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_epochs_accepted_forms():
    parse = pipeline.build_parser().parse_args
    assert parse(["--epochs", "2"]).epochs == ["2"] and parse(["--epochs", "+02"]).epochs == ["2"]
    assert parse(["--epochs", "epoch-002", "epoch-003"]).epochs == ["epoch-002", "epoch-003"]
    assert parse(["--epochs"]).epochs == []


@pytest.fixture
def no_run(monkeypatch, tmp_path):
    """main() in this process on an empty instance; starting any run fails the test."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DYNAMICS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DYNAMICS_EPOCHS", raising=False)  # main sets it for --epochs N

    def started(*args, **kwargs):
        raise AssertionError("a Dagster run started before the inputs were checked")

    monkeypatch.setattr(pipeline, "execute", started)
    source = tmp_path / "shards"
    source.mkdir()
    return source


def _bad_eval(root: Path, fault: str) -> Path:
    if fault == "missing":
        return root / "nowhere"
    if fault == "clip_benchmark without classnames.txt":
        (root / "test").mkdir(parents=True)
        (root / "test" / "0.tar").write_bytes(b"\0" * 1024)
        return root
    eval_folder(root, classes=("cat",) if fault == "one class" else ("cat", "dog"))
    if fault == "not an image":
        (root / "dog" / "1.png").write_text("<html>403 Forbidden</html>")
    elif fault == "empty class":
        (root / "zebra").mkdir()
    return root


@pytest.mark.parametrize("fault, message", [
    ("missing", r"--eval: eval set .*nowhere does not exist"),
    ("clip_benchmark without classnames.txt", r"--eval: eval set .*: classnames\.txt is missing"),
    ("not an image", r"--eval: eval set .*: 1 image\(s\) whose header does not decode:\n  .*dog/1\.png: not an image"),
    ("empty class", r"--eval: eval set .*: 1 empty class\(es\) .*\n  class folder .*zebra holds no image"),
    ("one class", r"--eval: eval set .*: one class folder \('cat'\)"),
])
def test_main_refuses_a_bad_eval_set_before_any_run(no_run, tmp_path, capsys, fault, message):
    bad = _bad_eval(tmp_path / "set", fault)
    assert pipeline.main(["--source", str(no_run), "--eval", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refused before any work: --eval: ")
    assert re.search(message, err), err


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "dynamics-5O"], "refused before any work: --recipes 'dynamics-5O': unknown recipe; the recipes "),
    (["--recipes", "dynamics-50.s7"], "--recipes 'dynamics-50.s7': unknown recipe"),
    (["--epochs", "epoch-365"], "--epochs: unknown epoch(s) ['epoch-365']; known: ['epoch-001', "),
    (["--epochs", "2", "epoch-001"], "--epochs 2 epoch-001: give one number N, or epoch partition keys"),
    (["--source", "{missing}"], "refused before any work: --source: the folder {missing} does not exist"),
    (["--source", "file://{missing}"], "--source: the folder {missing} does not exist"),
    (["--source", "datacomp:{missing}"], "--source: the folder {missing} does not exist"),
    (["--source", "{file}"], "--source: {file} is a file; the source is a folder of webdataset .tar shards"),
    (["--pool-option", "pairs"], "--pool-option 'pairs': expected KEY=VALUE"),
    (["--eval", "{set}"], "--eval {set}: the synthetic pool is evaluated on its own held-out set and would ignore it"),
])
def test_main_refuses_bad_inputs_before_any_run(no_run, tmp_path, capsys, argv, message):
    names = {"missing": tmp_path / "nowhere", "file": tmp_path / "a-file", "set": eval_folder(tmp_path / "set")}
    (tmp_path / "a-file").write_text("x")
    assert pipeline.main([a.format(**names) for a in argv] + ["--no-progress"]) == 2
    assert message.format(**names) in capsys.readouterr().err


def test_check_inputs_of_a_good_run(no_run, tmp_path):
    good = eval_folder(tmp_path / "set")
    args = pipeline.build_parser().parse_args(["--source", str(no_run), "--eval", str(good), "--recipe", "uniform-50",
                                               "--epochs", "epoch-002", "--pool-option", "seed=4"])
    pool_ops, recipes, epochs, notes = pipeline.check_inputs(args)
    assert pool_ops == {"raw_shards": {"source": str(no_run), "eval": str(good), "seed": 4}}
    assert recipes == ["uniform-50.s0"] and epochs == ["epoch-002"]
    assert notes == [f"eval set: {good} (ImageFolder: 4 images, 2 classes, 2 … 2 per class; checked in "
                     f"{notes[0].split('checked in ')[1]}"]
    for remote in ("s3://bucket/shards", "memory://pool"):  # listed by raw_shards itself (credentials, network)
        pipeline.check_source(remote)
