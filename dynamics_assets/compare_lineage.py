"""`dynamics compare-lineage`: the secondary comparison, every recipe of data/comparison.yaml through the lineage.

    dynamics compare-lineage                           # both profiles, every recipe, every seed
    dynamics compare-lineage --profile web --seeds 2 --recipes uniform-100 uniform-50 dynamics-exact-50
    dynamics compare-lineage --serial                  # one profile after the other (default: side by side)
    dynamics compare-lineage --doc docs/comparison.md  # also write the table into the document's comparison block
    dynamics compare-lineage --table-only --doc docs/comparison.md   # only the table, from the reports already there

Each pool profile runs in its own data root and Dagster instance, <out>/<profile>/ (its experiments
file experiments.yaml, its instance dagster_home/, its log compare.log), as
`python -m dynamics_assets.pipeline --recipes all --skip-existing --no-export --epochs N --pool-option ...`
with N the file's learner.epochs and the options its pool: section; the pipeline's last job writes
each profile's comparison report (Dagster asset comparison_report, MLflow). Then the table of every
profile: <out>/comparison_table.md (and --doc). Resumable: recipe × epoch partitions whose eval_report
is materialised are skipped, so an interrupted comparison continues where it stopped. Arguments after
`--` go to the pipeline.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
PROG = "dynamics compare-lineage"


@dataclass(frozen=True)
class ProfileRun:
    """One profile's pipeline run: its folder (data root), command line and environment."""

    profile: str
    folder: Path
    command: list[str]
    env: dict[str, str]

    @property
    def experiments(self) -> Path:
        return self.folder / "experiments.yaml"

    @property
    def home(self) -> Path:
        return self.folder / "dagster_home"

    @property
    def log(self) -> Path:
        return self.folder / "compare.log"


def build_parser() -> argparse.ArgumentParser:
    from dynamics_assets.core.ingest.synthetic import PROFILES  # the generator's pool profiles

    lines = __doc__.splitlines()
    p = argparse.ArgumentParser(prog=PROG, description=lines[0], epilog="\n".join(lines[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=(*PROFILES, "both"), default="both",
                   help="the pool profile to run (default both: every profile the file lists)")
    p.add_argument("--seeds", type=int, help="the first N seeds (default: every seed of the file)")
    p.add_argument("--recipes", nargs="+", help="only these recipes (default: every recipe of the file)")
    p.add_argument("--serial", action="store_true",
                   help="the profiles one after the other, output on the terminal too (default: side by side, "
                        "one thread each, output in each profile's compare.log)")
    p.add_argument("--config", default=str(ROOT / "data" / "comparison.yaml"),
                   help="the comparison file (default data/comparison.yaml)")
    p.add_argument("--out", help="results folder (default $DYNAMICS_DATA_DIR/comparison, else data/comparison)")
    p.add_argument("--doc", help="also write the table into this Markdown file's comparison block (docs/comparison.md)")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing: write the table from the reports already under --out")
    p.add_argument("--wall-seconds", type=float,
                   help="with --table-only: the wall time to state in the table (default: none stated)")
    return p


def split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The command's own arguments and those after the first ``--`` (for the pipeline)."""
    argv = list(argv)
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1:]
    return argv, []


def default_out(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get("DYNAMICS_DATA_DIR") or ROOT / "data") / "comparison"


def chosen_profiles(choice: str, spec: dict) -> list[str]:
    from dynamics_assets.core.evaluate import lineage_config

    return lineage_config.profiles(spec) if choice == "both" else [choice]


def profile_runs(spec: dict, profiles: Sequence[str], out: Path, extra: Sequence[str] = (), *,
                 parallel: bool = False, base_env: Mapping[str, str] | None = None,
                 python: str = sys.executable) -> list[ProfileRun]:
    """What each profile runs (pure: nothing is written or started). The number of epochs is the
    file's learner.epochs, handed over as ``--epochs N`` (the pipeline sets the code location's
    epoch partitions from it); the environment names the profile's data root, instance and
    experiments file, and side by side (``parallel``) one thread per process."""
    from dynamics_assets.core.evaluate import lineage_config

    n_epochs = lineage_config.epochs(spec)
    pool = lineage_config.pool_options(spec)
    base = dict(os.environ if base_env is None else base_env)
    base.pop("DYNAMICS_EPOCHS", None)  # --epochs decides
    runs = []
    for profile in profiles:
        folder = Path(out) / profile
        command = [python, "-m", "dynamics_assets.pipeline", "--recipes", "all", "--skip-existing", "--no-export",
                   "--no-progress", "--epochs", str(n_epochs), "--pool-option", f"profile={profile}", *pool, *extra]
        env = {**base, "DYNAMICS_DATA_DIR": str(folder), "DAGSTER_HOME": str(folder / "dagster_home"),
               "DYNAMICS_EXPERIMENTS": str(folder / "experiments.yaml")}
        if parallel:
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        runs.append(ProfileRun(profile, folder, command, env))
    return runs


def dagster_yaml(env: Mapping[str, str] = os.environ) -> Path:
    """The instance settings copied into each profile's instance: ``DAGSTER_YAML`` or dagster.yaml."""
    path = Path(env.get("DAGSTER_YAML") or "dagster.yaml")
    return path if path.is_absolute() else ROOT / path


def prepare(run: ProfileRun, experiments: dict, config: str | Path, instance_yaml: Path) -> None:
    """The profile's folder, its experiments file (written atomically) and its instance's dagster.yaml."""
    from dynamics_assets.core.evaluate import lineage_config

    run.home.mkdir(parents=True, exist_ok=True)
    lineage_config.write(run.experiments, experiments, config)
    shutil.copyfile(instance_yaml, run.home / "dagster.yaml")


def _tee(stream: IO[str], *outs: IO[str]) -> None:
    for line in stream:
        for out in outs:
            out.write(line)
            out.flush()


def execute(runs: Sequence[ProfileRun], parallel: bool) -> list[str]:
    """Run the profiles (side by side, each into its log; or one after the other, also to the
    terminal); returns the profiles that failed."""
    failed: list[str] = []
    started: list[tuple[ProfileRun, subprocess.Popen, IO[str]]] = []
    try:
        if parallel:
            for run in runs:
                print(f"  {run.profile}: log {run.log}", flush=True)
                log = open(run.log, "w")
                started.append((run, subprocess.Popen(run.command, cwd=ROOT, env=run.env, stdout=log,
                                                      stderr=subprocess.STDOUT), log))
            for run, proc, log in started:
                if proc.wait() != 0:
                    failed.append(run.profile)
                log.close()
        else:
            for run in runs:
                with open(run.log, "w") as log:
                    proc = subprocess.Popen(run.command, cwd=ROOT, env=run.env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True, bufsize=1)
                    started.append((run, proc, log))
                    _tee(proc.stdout, sys.stdout, log)
                    if proc.wait() != 0:
                        failed.append(run.profile)
    except KeyboardInterrupt:
        for _, proc, _ in started:
            if proc.poll() is None:
                proc.terminate()
        for _, proc, log in started:
            proc.wait()
            log.close()
        raise
    for run in runs:
        if run.profile in failed:
            print(f"  {run.profile} failed: see {run.log}", file=sys.stderr, flush=True)
    return failed


def _error(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    own, extra = split_extra(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    import yaml

    from dynamics_assets.core.evaluate import lineage_config, lineage_table

    out = Path(args.out).resolve() if args.out else default_out().resolve()
    if args.seeds is not None and args.seeds < 1:
        return _error(f"--seeds {args.seeds}: expected a number of seeds ≥ 1")
    if args.doc and not Path(args.doc).is_file():
        return _error(f"--doc {args.doc}: no such file")
    if args.wall_seconds is not None and not args.table_only:
        return _error("--wall-seconds goes with --table-only (a run measures its own wall time)")
    try:
        spec = lineage_config.load(args.config)
        experiments = lineage_config.build(spec, args.seeds, args.recipes)
    except (OSError, ValueError) as e:
        return _error(str(e))
    except yaml.YAMLError as e:
        return _error(f"{args.config}: not YAML: {e}")
    profiles = chosen_profiles(args.profile, spec)

    wall: float | None = args.wall_seconds
    status = 0
    if not args.table_only:
        if not lineage_config.has_reference(experiments):
            print(f"{PROG}: no uniform recipe chosen: the report will have no reference "
                  "(add uniform-50 and/or uniform-100)", file=sys.stderr)
        parallel = not args.serial and len(profiles) > 1
        runs = profile_runs(spec, profiles, out, extra, parallel=parallel)
        instance_yaml = dagster_yaml()
        if not instance_yaml.is_file():
            return _error(f"{instance_yaml}: no such file (DAGSTER_YAML)")
        for run in runs:
            prepare(run, experiments, args.config, instance_yaml)
        n_runs = len(experiments["recipes"]) * len(experiments["seeds"])
        print(f"comparison: profiles {' '.join(profiles)}, {n_runs} recipe × seed runs each, "
              f"{lineage_config.epochs(spec)} epochs; data in {out}", flush=True)
        started = time.monotonic()
        try:
            failed = execute(runs, parallel)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; run it again to continue where it stopped", file=sys.stderr)
            return 130
        wall = time.monotonic() - started
        status = 1 if failed else 0
    table = out / "comparison_table.md"
    try:
        lineage_table.write(out, profiles, wall, out=table, doc=args.doc)
    except (OSError, KeyError, ValueError) as e:
        print(f"{PROG}: no table: {e}", file=sys.stderr)
        return 1
    if wall is not None and not args.table_only:
        print(f"comparison: wall time {int(wall) // 60} min {int(wall) % 60} s; table: {table}")
    else:
        print(f"comparison: table: {table}")
    if args.doc:
        print(f"comparison: wrote the table into {args.doc}")
    return status


if __name__ == "__main__":
    sys.exit(main())
