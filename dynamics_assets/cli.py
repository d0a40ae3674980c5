"""The ``dynamics`` command: one entry point for what the project runs.

    dynamics run [OPTIONS]              the main job: the whole lineage (dynamics_assets.pipeline)
    dynamics ui [--host H] [--port N]   the Dagster UI (webserver + daemon) on http://127.0.0.1:3000
    dynamics compare [OPTIONS]          run (or resume) the comparison design (dynamics_assets.compare)
    dynamics compare-lineage [OPTIONS]  the secondary comparison: every recipe of data/comparison.yaml
                                        through the whole Dagster lineage (dynamics_assets.compare_lineage)
    dynamics generate --out DIR [...]   write the synthetic pool (core/ingest/synthetic/)
    dynamics prune [--dry-run] DATA_ROOT  delete artefact versions nothing current uses (core/io/versions.py)

``dynamics COMMAND --help`` lists a command's options. ``run``, ``compare``, ``compare-lineage``,
``generate`` and ``prune`` hand the rest of the command line, unchanged, to their module's
``main``, whose parser reads and checks it (a wrong option: its message and exit status 2).
``run`` and ``ui`` use the project's local Dagster instance as ``scripts/env.sh`` sets it up: data
under ``DYNAMICS_DATA_DIR`` (default ``<project>/data``), the instance in ``DAGSTER_HOME`` (default
``$DYNAMICS_DATA_DIR/dagster_home``) with ``dagster.yaml`` (or ``DAGSTER_YAML``) copied in;
``compare-lineage`` gives each pool profile its own data root and instance under its ``--out``.
Imports are lazy: ``dynamics --help`` loads neither Dagster nor torch.
"""
from __future__ import annotations

import argparse
import contextlib
import filecmp
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

PROG = "dynamics"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 3000


def project_root() -> Path:
    """The checkout this package is installed from (``pip install -e .``): the folder holding
    ``workspace.yaml`` and ``dagster.yaml``; else the working directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "workspace.yaml").is_file() else Path.cwd()


def instance_env(root: Path | None = None) -> dict[str, str]:
    """What ``scripts/env.sh`` exports, set in ``os.environ`` (existing values win): the data root,
    the Dagster instance folder with its ``dagster.yaml``, and the venv's ``bin`` first on ``PATH``.

    ``dagster.yaml`` is copied into an instance folder this function chose, or one without it, or
    when ``DAGSTER_YAML`` names another file (``deploy/dagster.postgres.yaml``); an instance folder
    of your own with its own ``dagster.yaml`` is left as it is."""
    root = root or project_root()
    env = os.environ
    data = env.setdefault("DYNAMICS_DATA_DIR", str(root / "data"))
    chosen = "DAGSTER_HOME" not in env
    home = Path(env.setdefault("DAGSTER_HOME", str(Path(data) / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    cfg = Path(env.get("DAGSTER_YAML") or root / "dagster.yaml")
    if not cfg.is_absolute():
        cfg = root / cfg
    target = home / "dagster.yaml"
    if cfg.is_file() and (chosen or "DAGSTER_YAML" in env or not target.exists()):
        if not (target.exists() and filecmp.cmp(cfg, target, shallow=False)):
            shutil.copyfile(cfg, target)
    bin_dir = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH")) if p)
    return {k: env[k] for k in ("DYNAMICS_DATA_DIR", "DAGSTER_HOME", "PATH")}


@contextlib.contextmanager
def _prog(name: str) -> Iterator[None]:
    """``sys.argv[0]`` reads ``dynamics NAME`` while a delegate runs, so a parser without its own
    ``prog`` names the command that was typed in its usage and error lines."""
    saved = sys.argv[0] if sys.argv else None
    if sys.argv:
        sys.argv[0] = f"{PROG} {name}"
    else:
        sys.argv.append(f"{PROG} {name}")
    try:
        yield
    finally:
        if saved is None:
            sys.argv.pop(0)
        else:
            sys.argv[0] = saved


def _status(code: object) -> int:
    """A delegate's return value as an exit status (``None`` — a ``main`` that returns nothing — is 0)."""
    return 0 if code is None else code if isinstance(code, int) else 1


# ----------------------------------------------------------------------------- the commands


def cmd_run(argv: list[str]) -> int:
    from dynamics_assets import pipeline

    pipeline.build_parser().parse_args(argv)  # --help and a wrong option end here, before the instance is set up
    instance_env()

    with _prog("run"):
        return _status(pipeline.main(argv))


def cmd_compare(argv: list[str]) -> int:
    import importlib

    try:
        compare = importlib.import_module("dynamics_assets.compare")
    except ModuleNotFoundError as e:
        if e.name != "dynamics_assets.compare":
            raise
        print(f"{PROG} compare: this checkout has no dynamics_assets/compare.py, the comparison's command",
              file=sys.stderr)
        return 1
    with _prog("compare"):
        return _status(compare.main(argv))


def cmd_compare_lineage(argv: list[str]) -> int:
    from dynamics_assets import compare_lineage

    with _prog("compare-lineage"):
        return _status(compare_lineage.main(argv))


def cmd_generate(argv: list[str]) -> int:
    from dynamics_assets.core.ingest import synthetic

    with _prog("generate"):
        return _status(synthetic._main(argv))


def cmd_prune(argv: list[str]) -> int:
    from dynamics_assets.core.io import versions

    # versions' own command line is `python -m dynamics_assets.core.io.versions prune [--dry-run] DATA_ROOT`
    return _status(versions.main(["prune", *argv]))


def ui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} ui", description="The Dagster UI (webserver + daemon: sensors, schedules, backfills) over the "
        "project's persistent instance, as `dagster dev -h HOST -p PORT -w workspace.yaml` in the project folder. "
        "Arguments it does not know are passed on to `dagster dev`.")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"the address to serve on (default {DEFAULT_HOST}: "
                        "this machine only)")
    parser.add_argument("--port", type=int, default=os.environ.get("PORT") or DEFAULT_PORT,
                        help=f"the port to serve on (default $PORT, else {DEFAULT_PORT})")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="the workspace file (default: the project's workspace.yaml)")
    return parser


def ui_command(args: argparse.Namespace, extra: Sequence[str], root: Path) -> list[str]:
    """The ``dagster dev`` command line for ``dynamics ui``."""
    exe = Path(sys.executable).parent / "dagster"
    dagster = [str(exe)] if exe.is_file() else [shutil.which("dagster") or "dagster"]
    workspace = args.workspace or root / "workspace.yaml"
    return [*dagster, "dev", "-h", args.host, "-p", str(args.port), "-w", str(workspace), *extra]


def cmd_ui(argv: list[str]) -> int:
    args, extra = ui_parser().parse_known_args(argv)
    root = project_root()
    env = instance_env(root)
    command = ui_command(args, extra, root)
    print(f"{PROG} ui: http://{args.host}:{args.port} (instance {env['DAGSTER_HOME']})", file=sys.stderr, flush=True)
    try:
        # its own process group: a terminal's Ctrl-C reaches this process, which hands it on once;
        # SIGINT restored to its default in it (a shell's background job ignores SIGINT, and dagster dev
        # would then ignore SIGTERM too: it maps SIGTERM to SIGINT's handler)
        child = subprocess.Popen(command, cwd=root, process_group=0,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    except FileNotFoundError:
        print(f"{PROG} ui: {command[0]} not found: install the project (bash scripts/bootstrap.sh)", file=sys.stderr)
        return 1
    passed_on = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, lambda signum, _: child.send_signal(signum)) for s in passed_on}
    try:
        code = child.wait()  # dagster dev stops its webserver and daemon, then exits
        return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "run": (cmd_run, "the main job: the whole lineage on the default data or yours, in the local instance"),
    "ui": (cmd_ui, f"the Dagster UI (webserver + daemon) on http://{DEFAULT_HOST}:{DEFAULT_PORT}"),
    "compare": (cmd_compare, "run (or resume) the comparison design and write its report"),
    "compare-lineage": (cmd_compare_lineage, "the secondary comparison: every recipe of data/comparison.yaml "
                        "through the whole Dagster lineage"),
    "generate": (cmd_generate, "write the synthetic long-tailed image–caption pool"),
    "prune": (cmd_prune, "delete artefact versions nothing current uses"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top level: ``dynamics --help`` lists the commands; each command's own parser reads the
    rest of the command line (``dynamics COMMAND --help``)."""
    parser = argparse.ArgumentParser(prog=PROG, description="One entry point for what the project runs.",
                                     epilog=f"`{PROG} COMMAND --help` lists a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, text) in COMMANDS.items():
        # argv after the command goes to the command unparsed here (its parser reads it)
        sub.add_parser(name, help=text, add_help=False).add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        # dispatched by hand so the rest reaches the command exactly as typed (options first included)
        return COMMANDS[argv[0]][0](argv[1:])
    build_parser().parse_args(argv)  # --help, no command or an unknown one: argparse's message and status
    return 2


if __name__ == "__main__":
    sys.exit(main())
