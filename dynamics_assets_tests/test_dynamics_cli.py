"""The ``dynamics`` command line (``dynamics_assets/cli.py``): every command answers ``--help`` naming
its options, hands the rest of the command line to its module unchanged, and a wrong option is
refused with argparse's message and exit status 2; ``dynamics --help`` loads neither Dagster nor torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# each command's --help and options it must name
HELP = {
    "run": ["--source", "--eval", "--epochs", "--recipes", "--skip-existing", "--no-progress"],
    "ui": ["--host", "--port", "--workspace"],
    "generate": ["--out", "--pairs", "--seed", "--profile"],
    "prune": ["--dry-run", "data_root"],
    "compare-lineage": ["--profile", "--seeds", "--recipes", "--serial", "--config", "--out", "--doc"],
}


def dynamics(*args: str, tmp_path: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home"), "DYNAMICS_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([sys.executable, "-m", "dynamics_assets.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_top_level_help_lists_every_command(tmp_path):
    proc = dynamics("--help", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for command in ("run", "ui", "compare", "compare-lineage", "generate", "prune"):
        assert command in proc.stdout


@pytest.mark.parametrize("command", sorted(HELP))
def test_each_command_help_names_its_options(command, tmp_path):
    proc = dynamics(command, "--help", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    missing = [option for option in HELP[command] if option not in proc.stdout]
    assert missing == [], proc.stdout
    assert not (tmp_path / "dagster_home").exists()  # --help sets nothing up


def test_compare_help(tmp_path):
    proc = dynamics("compare", "--help", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "usage: dynamics compare" in proc.stdout


def test_compare_lineage_help(tmp_path):
    proc = dynamics("compare-lineage", "--help", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "usage: dynamics compare-lineage" in proc.stdout and "data/comparison.yaml" in proc.stdout
    assert not (tmp_path / "data").exists()  # --help writes nothing


def test_compare_lineage_hands_over_its_arguments(monkeypatch):
    from dynamics_assets import cli, compare_lineage

    seen = []
    monkeypatch.setattr(compare_lineage, "main", lambda argv: seen.append((sys.argv[0], list(argv))) or 0)
    assert cli.main(["compare-lineage", "--profile", "web", "--", "--verbose"]) == 0
    assert seen == [("dynamics compare-lineage", ["--profile", "web", "--", "--verbose"])]


def test_compare_says_so_when_its_module_is_missing(monkeypatch, capsys):
    from dynamics_assets import cli

    monkeypatch.setitem(sys.modules, "dynamics_assets.compare", None)  # import fails: ModuleNotFoundError
    assert cli.main(["compare", "--help"]) == 1
    assert "dynamics compare: this checkout has no dynamics_assets/compare.py" in capsys.readouterr().err


def test_no_command_or_an_unknown_one_exits_2(tmp_path):
    for args in ((), ("bogus",)):
        proc = dynamics(*args, tmp_path=tmp_path)
        assert proc.returncode == 2 and "usage: dynamics" in proc.stderr, (args, proc.stderr)


def test_run_refuses_a_bad_option_with_exit_2_and_a_message(tmp_path):
    proc = dynamics("run", "--no-such-option", tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-option" in proc.stderr
    proc = dynamics("run", "--epochs", "0", tmp_path=tmp_path)
    assert proc.returncode == 2 and "the number of epochs must be an integer in [1, 365]" in proc.stderr
    assert not (tmp_path / "dagster_home").exists()  # refused before the instance is set up


def test_run_passes_the_command_line_through_unchanged(monkeypatch, tmp_path):
    """Options first, several values, repeated ones: the pipeline sees exactly what was typed, with the
    project's instance set up as scripts/env.sh does."""
    from dynamics_assets import cli, pipeline

    seen = {}

    def fake_main(argv):
        seen["argv"], seen["home"] = list(argv), os.environ["DAGSTER_HOME"]
        return 0

    monkeypatch.setattr(pipeline, "main", fake_main)
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))  # restored afterwards (the venv's bin goes first)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DYNAMICS_DATA_DIR", str(tmp_path / "data"))
    argv = ["--epochs", "2", "--recipes", "uniform-100", "dynamics-50", "--pool-option", "a=b", "--no-progress"]
    assert cli.main(["run", *argv]) == 0
    assert seen == {"argv": argv, "home": str(tmp_path / "home")}
    assert (tmp_path / "home" / "dagster.yaml").read_text() == (ROOT / "dagster.yaml").read_text()


def test_prune_and_generate_hand_over_their_arguments(monkeypatch, tmp_path):
    from dynamics_assets import cli
    from dynamics_assets.core.ingest import synthetic
    from dynamics_assets.core.io import versions

    calls = []
    monkeypatch.setattr(versions, "main", lambda argv: calls.append(("prune", argv)) or 0)
    monkeypatch.setattr(synthetic, "_main", lambda argv: calls.append(("generate", argv)))
    assert cli.main(["prune", "--dry-run", str(tmp_path)]) == 0
    assert cli.main(["generate", "--out", str(tmp_path), "--pairs", "10"]) == 0
    assert calls == [("prune", ["prune", "--dry-run", str(tmp_path)]),
                     ("generate", ["--out", str(tmp_path), "--pairs", "10"])]


def test_ui_runs_dagster_dev_on_localhost_with_the_project_workspace(monkeypatch):
    from dynamics_assets import cli

    monkeypatch.delenv("PORT", raising=False)
    args, extra = cli.ui_parser().parse_known_args([])
    command = cli.ui_command(args, extra, ROOT)
    assert Path(command[0]).name == "dagster"
    assert command[1:] == ["dev", "-h", "127.0.0.1", "-p", "3000", "-w", str(ROOT / "workspace.yaml")]
    monkeypatch.setenv("PORT", "3100")
    args, extra = cli.ui_parser().parse_known_args(["--code-server-log-level", "debug"])
    assert cli.ui_command(args, extra, ROOT)[-4:] == ["-w", str(ROOT / "workspace.yaml"),
                                                      "--code-server-log-level", "debug"]
    assert "3100" in cli.ui_command(args, extra, ROOT)


def test_help_imports_neither_dagster_nor_torch():
    code = ("import sys, json\nfrom dynamics_assets import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n"
            "    pass\nheavy = ('torch', 'dagster', 'open_clip', 'numpy')\n"
            "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
