"""The main command: materialise the whole lineage on the default data in the local instance.

    bash scripts/pipeline.sh            # (sets DAGSTER_HOME=data/dagster_home and bootstraps)
    python -m dynamics_assets.pipeline  # the same, inside the venv
    dynamics compare-lineage            # every recipe × seed of data/comparison.yaml, per pool profile

Runs the ``curate_pool`` job, then ``train_epoch`` (plan → checkpoint → eval report) for every
epoch of the chosen recipes in order, then ``report_recipes`` (learning curves, comparison), all
in the instance's persistent storage, so every run and materialisation shows up in the Dagster UI.

Before any run starts, every input is checked and a wrong one refused in seconds with exit status 2
(``check_inputs``): ``--epochs`` (argparse: a number in [1, 365] or epoch keys), a local ``--source``
folder, the ``--eval`` set (``core/evaluate/eval_set.validate_eval_set``: layout, two classes or
more, none empty, every image header; refused with the synthetic pool, which would ignore it),
``--recipes`` and epoch keys against the code location's partitions.

Every job runs in this process (``execute_in_process``: no process start-up per step). Each step
prints one line as it finishes: its duration and its key figure, read from the metadata of what it
materialised. Long loops (reference model, embedding, epoch training, evaluation) draw progress
bars on stderr when it is a terminal (``DYNAMICS_PROGRESS``, see ``core/io/progress.py``).
The closing summary says where the last recipe × epoch's outputs are (``summary_lines``,
``export_lines``): reports, the checkpoint's open_clip model folder, the webdataset export with the
open_clip_train command that trains on it, the DataComp subset file, and — for a pool that ships
embeddings — the metadata parquet with its img2dataset command.
Dagster's own event log lines and its beta / preview / deprecation warnings show with ``--verbose``.
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TextIO

if TYPE_CHECKING:
    import dagster as dg

# Dagster's console logger at WARNING: no per-event DEBUG lines (the instance still records every event).
QUIET_RUN_CONFIG: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


MAX_EPOCHS = 365  # epoch keys are days of a year (defs/partitions.epoch_partitions_def refuses more)
_EPOCH_KEY = re.compile(r"epoch-(\d{3})")


def epoch_arg(text: str) -> str:
    """``--epochs``' argparse type: a number N in [1, MAX_EPOCHS] (returned as its decimal digits) or
    an epoch partition key ``epoch-NNN``; anything else is refused before any work."""
    value = text.strip()
    if re.fullmatch(r"[+-]?\d+", value):
        if not 1 <= int(value) <= MAX_EPOCHS:
            raise argparse.ArgumentTypeError(f"{text!r}: the number of epochs must be an integer in [1, {MAX_EPOCHS}]")
        return str(int(value))
    if (key := _EPOCH_KEY.fullmatch(value)) and 1 <= int(key.group(1)) <= MAX_EPOCHS:
        return value
    raise argparse.ArgumentTypeError(f"{text!r} is neither a number of epochs N ≥ 1 (trains epoch-001 … epoch-N) "
                                     "nor an epoch partition key such as epoch-001")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dynamics_assets.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="the pool: a folder of webdataset .tar shards (img2dataset layout) as a "
                        "path, a file:// URI or an fsspec URI (s3://, gs://, memory://, …); default: the "
                        "embedded synthetic pool. The same as raw_shards' `source` in the Dagster run config")
    parser.add_argument("--eval", dest="eval_set", help="a labelled evaluation set: an ImageFolder (one folder per "
                        "class) or a clip_benchmark webdataset folder; without one a user's pool is evaluated "
                        "by retrieval only")
    parser.add_argument("--curated", help="a curated set: a folder of webdataset shards you trust (the curated model "
                        "and the dfn strategy train on it; it must not overlap the eval set), or 'synthetic' for the "
                        "synthetic pool's clean set. raw_shards' `curated`")
    parser.add_argument("--target", help="a target set: a folder of images (image_filter's target embeddings, "
                        "embedded with the pool's encoder) and/or a classnames.txt (text_filter's class names). "
                        "raw_shards' `target`")
    parser.add_argument("--reference-on", dest="reference_on", choices=("pool", "curated"), default="pool",
                        help="what the reference model (the pool's encoder: embeddings, clusters, CLIP score) "
                        "trains on: the raw pool (default) or the curated set (needs --curated). "
                        "reference_model's `train_on`")
    parser.add_argument("--pool-option", dest="pool_options", action="append", default=[], metavar="KEY=VALUE",
                        help="one more raw_shards config value (repeatable), e.g. pairs=5000 or profile=web "
                             "for the synthetic pool")
    parser.add_argument("--epochs", nargs="*", type=epoch_arg, help="a number of epochs N ≥ 1 (epoch-001 … "
                        "epoch-N), or epoch partition keys (default: every epoch partition, DYNAMICS_EPOCHS)")
    parser.add_argument("--recipes", "--recipe", nargs="*", help="recipe names or recipe partition keys "
                        "(dynamics-50 or dynamics-50.s0), or 'all' (default: the default recipe of "
                        "data/experiments.yaml, first seed)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="curate_pool: materialise only its assets that have never been materialised "
                             "(and what depends on them); skip recipe × epoch partitions whose eval_report "
                             "is already materialised")
    parser.add_argument("--no-export", action="store_true",
                        help="train_epoch without its exports (datacomp_subset, webdataset_export): plan, "
                             "checkpoint, eval report only (the benchmark comparison)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="Dagster's event log (DEBUG) and its beta/preview/deprecation warnings; each run "
                             "ends 2 s later so that its last step lines reach the console")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run_config(verbose: bool, ops: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run config given to every job: Dagster's default console logging when verbose, else
    WARNING; ``ops``: per-asset config (e.g. raw_shards' source)."""
    config = {} if verbose else {k: dict(v) for k, v in QUIET_RUN_CONFIG.items()}
    if ops:
        config["ops"] = {name: {"config": dict(values)} for name, values in ops.items()}
    return config


def pool_config(source: str | None, eval_set: str | None,
                options: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """raw_shards' config for ``--source`` / ``--eval`` and ``--pool-option KEY=VALUE`` (values that
    read as integers become integers); nothing when none is given."""
    values: dict[str, Any] = {k: v for k, v in (("source", source), ("eval", eval_set)) if v}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            sys.exit(f"--pool-option {option!r}: expected KEY=VALUE")
        values[key] = int(value) if value.lstrip("-").isdigit() else value
    return {"raw_shards": values} if values else {}


def epoch_keys(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """``--epochs``: one integer N → the first N epoch keys; keys → themselves, checked."""
    if not requested:
        return list(available)
    if len(requested) == 1 and requested[0].isdigit():
        n = int(requested[0])
        if not 1 <= n <= len(available):
            sys.exit(f"--epochs {n}: this code location has epochs 1 … {len(available)} (DYNAMICS_EPOCHS)")
        return list(available[:n])
    if unknown := [e for e in requested if e not in available]:
        sys.exit(f"--epochs: unknown epoch(s) {unknown}; known: {list(available)} (DYNAMICS_EPOCHS, or --epochs N)")
    return list(requested)


def recipe_keys(requested: Sequence[str] | None, experiments) -> list[str]:
    """``--recipes``: 'all' (seed-major), names (their first seed) or partition keys."""
    recipes = experiments.recipes
    if requested == ["all"]:  # seed-major: every recipe's first seed before any second seed
        return sorted(recipes, key=lambda k: (recipes[k].seed, list(recipes).index(k)))
    if not requested:
        return experiments.default_keys
    keys = []
    for r in requested:
        if r in recipes:
            keys.append(r)
        elif named := [k for k, v in recipes.items() if v.name == r]:
            keys.append(named[0])
        else:
            sys.exit(f"--recipes {r!r}: unknown recipe; the recipes of this code location (DYNAMICS_EXPERIMENTS, "
                     f"default data/experiments.yaml): {sorted({v.name for v in recipes.values()})}, or a "
                     f"partition key such as {next(iter(recipes))}")
    return keys


# ---------------------------------------------------------------------------------------------
# Everything a run needs, checked before any work
# ---------------------------------------------------------------------------------------------


class InputError(ValueError):
    """A command-line input that would make the run fail later; the message names the option."""


def check_source(source: str | None) -> None:
    """A local ``source`` (a path, a ``file://`` URI, ``datacomp:`` / ``laion:`` + a path) must be
    an existing folder; remote URIs are listed by raw_shards itself (they may need credentials)."""
    if not source or source == "synthetic":
        return
    from dynamics_assets.core.ingest.landing import local_folder
    from dynamics_assets.core.ingest.precomputed import parse_source
    from dynamics_assets.core.ingest.sources import is_local

    kind, path = parse_source(source)
    if kind == "auto" and not is_local(source):
        return
    try:
        folder = path.expanduser() if kind != "auto" else local_folder(source)
    except ValueError as e:
        raise InputError(f"--source: {e}") from e
    if not folder.exists():
        raise InputError(f"--source: the folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"--source: {folder} is a file; the source is a folder of webdataset .tar shards"
                         + (f" (or a {kind} pool)" if kind != "auto" else ""))


def check_eval(eval_set: str | None, source: str | None) -> str | None:
    """The labelled set checked as ``core/evaluate/eval_set.validate_eval_set`` does (layout, two
    classes or more, none empty, every image header); its one-line description, or None."""
    if not eval_set:
        return None
    if not source or source == "synthetic":
        raise InputError(f"--eval {eval_set}: the synthetic pool is evaluated on its own held-out set and "
                         "would ignore it; give your pool with --source")
    from dynamics_assets.core.evaluate.eval_set import EvalSetError, validate_eval_set

    try:
        return validate_eval_set(eval_set).describe()
    except EvalSetError as e:
        raise InputError(f"--eval: {e}") from e


def check_pool_inputs(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """raw_shards' config (``--source``, ``--eval``, ``--pool-option``) checked without importing
    Dagster: (the config, lines to print); ``InputError`` naming the option otherwise."""
    try:
        pool_ops = pool_config(args.source, args.eval_set, args.pool_options)
    except SystemExit as e:
        raise InputError(str(e.code)) from e
    for name in ("curated", "target"):  # --curated / --target, checked before any run
        if (value := getattr(args, name, None)):
            from dynamics_assets.core.ingest.curated import CuratedSetError, check_curated, check_target

            try:
                if name == "target":
                    check_target(value)
                elif value != "synthetic":
                    check_curated(value)
            except CuratedSetError as e:
                raise InputError(f"--{name}: {e}") from e
            pool_ops.setdefault("raw_shards", {})[name] = value
    if getattr(args, "reference_on", "pool") == "curated":
        if not pool_ops.get("raw_shards", {}).get("curated"):
            raise InputError("--reference-on curated: no curated set to train on; name one with --curated DIR "
                             "(or --curated synthetic, or raw_shards' `curated` with --pool-option)")
        pool_ops.setdefault("reference_model", {})["train_on"] = "curated"
    pool = pool_ops.get("raw_shards", {})
    check_source(pool.get("source"))
    described = check_eval(pool.get("eval"), pool.get("source"))
    return pool_ops, [f"eval set: {described}"] if described else []


def check_run_inputs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """``--recipes`` against the code location's recipes (data/experiments.yaml) and ``--epochs``
    against its epoch partitions: (recipe keys, epoch keys); ``InputError`` otherwise."""
    if args.epochs and len(args.epochs) > 1 and any(e.isdigit() for e in args.epochs):
        raise InputError(f"--epochs {' '.join(args.epochs)}: give one number N, or epoch partition keys")
    from dynamics_assets.defs.partitions import epoch_partitions

    try:
        return recipe_keys(args.recipes, _experiments()), epoch_keys(args.epochs, epoch_partitions.get_partition_keys())
    except SystemExit as e:
        raise InputError(str(e.code)) from e


def check_inputs(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], list[str], list[str], list[str]]:
    """Every input of the run, checked before any Dagster run starts: (raw_shards' config, recipe
    keys, epoch keys, lines to print); ``InputError`` naming the option otherwise."""
    pool_ops, notes = check_pool_inputs(args)
    recipes, epochs = check_run_inputs(args)
    return pool_ops, recipes, epochs, notes


def configure_output(verbose: bool, progress: bool = True) -> None:
    """Warnings filters, the progress switch and (verbose) Dagster's log-tail wait for this process."""
    if verbose:
        # Dagster's console lines of a run's steps reach the terminal through its compute-log
        # capture (a file and `tail -F`, which polls once a second when no inotify instance is
        # left, as in a long test session): give the tail two seconds after the
        # steps end so the last lines are not lost (dagster-io/dagster#23336); once per run
        os.environ.setdefault("DAGSTER_COMPUTE_LOG_TAIL_WAIT_AFTER_FINISH", "2")
    else:
        from dagster import BetaWarning, PreviewWarning, SupersessionWarning

        for category in (BetaWarning, PreviewWarning, SupersessionWarning):
            warnings.filterwarnings("ignore", category=category)
        # dagster_shared.utils.warnings.deprecation_warning's wording
        warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in", category=DeprecationWarning)
        # open_clip's notice (on the root logger) when a model starts from random weights, as epoch 1 does here
        logging.getLogger().addFilter(_drop_random_init_notice)
        # MLflow's own INFO lines (creating its SQLite tables on the first run); mlflow reads this
        # when it is imported (inside the asset bodies)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from dynamics_assets.core.io import progress as bars

    if not progress:
        bars.enable(False)
    elif bars.ENV not in os.environ:  # DYNAMICS_PROGRESS=always (or 0) set by the caller wins
        bars.enable(True)


def _drop_random_init_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("No pretrained weights loaded for model")


# ---------------------------------------------------------------------------------------------
# One line per step
# ---------------------------------------------------------------------------------------------

def _reused(value: Any) -> str:
    return "reused" if value is True else ""


def _count(n: Any, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


_LAYOUT_NAMES = {"datacomp": "DataComp pool", "laion": "LAION / clip-retrieval pool"}


def _shipped_pool(values: Mapping[str, Any], seen: Mapping[str, Mapping[str, Any]]) -> str:
    """raw_shards of a pool that ships its embeddings: its layout and parts (no shards to count)."""
    layout = values.get("layout")
    if not layout:
        return ""
    name = _LAYOUT_NAMES.get(layout, f"{layout} pool")
    parts = values.get("parts")
    return f"{name}, {_count(parts, 'part')}" if isinstance(parts, int) else name


def _reference_not_trained(values: Mapping[str, Any], seen: Mapping[str, Mapping[str, Any]]) -> str:
    """reference_model skipped: why, and which shipped embeddings stand in for it (raw_pairs' metadata)."""
    if "skipped" not in values:
        return ""
    raw = seen.get("raw_pairs", {})
    which = raw.get("embedding") if raw.get("embedding") not in (None, "None") else \
        (f"{raw['dim']}-d" if raw.get("dim") else "")
    return f"not trained: the pool ships its embeddings{f' ({which})' if which else ''}"


def _shipped_embeddings(values: Mapping[str, Any], seen: Mapping[str, Mapping[str, Any]]) -> str:
    """pair_embeddings of a pool that ships them: how many, which encoder and dimension."""
    if not str(values.get("source", "")).startswith("precomputed"):
        return ""
    n = values.get("dagster/row_count")
    about = ", ".join(str(x) for x in (values.get("encoder"), f"{values['dim']}-d" if values.get("dim") else None) if x)
    head = _count(n, "embedding") if isinstance(n, int) else "embeddings"
    return f"{head} shipped by the pool" + (f" ({about})" if about else "")


def _skipped(values: Mapping[str, Any], seen: Mapping[str, Mapping[str, Any]]) -> str:
    """An asset that had nothing to do says why (its ``skipped`` metadata)."""
    return f"skipped: {values['skipped']}" if values.get("skipped") else ""


def _dfn_scores(values: Mapping[str, Any], seen: Mapping[str, Mapping[str, Any]]) -> str:
    """dfn_scores: how many pairs scored by what, the filter's quality and the model's own accuracy, apart."""
    if values.get("skipped"):
        return _skipped(values, seen)
    parts = [f"{values['dagster/row_count']:,} pairs scored" if isinstance(values.get("dagster/row_count"), int)
             else "scored", str(values.get("source", "")) or None]
    if isinstance(values.get("filter/auc_clean_vs_misaligned"), float):
        parts.append(f"filter AUC {values['filter/auc_clean_vs_misaligned']:.3f}")
    if isinstance(values.get("model/zero_shot_top1"), float):
        parts.append(f"its own top-1 {values['model/zero_shot_top1']:.3f}")
    return ", ".join(p for p in parts if p)


def _curation_targets(values: Mapping[str, Any], seen: Mapping[str, Mapping[str, Any]]) -> str:
    """curation_targets: how many class names and target images, and where each came from."""
    if values.get("skipped"):
        return _skipped(values, seen)
    def part(n: Any, noun: str, source: Any) -> str:
        n = n if isinstance(n, int) else 0
        return f"{_count(n, noun)}" + (f" from {source}" if n and source and source != "none" else "")
    return "; ".join([part(values.get("classnames"), "class name", values.get("classnames_source")),
                      part(values.get("target_images"), "target image", values.get("target_source"))])


# asset → a line built from its whole metadata (and the other assets' in ``seen``), for the cases
# FIGURES' per-key parts cannot say; "" falls back to FIGURES.
LINES: dict[str, Callable[[Mapping[str, Any], Mapping[str, Mapping[str, Any]]], str]] = {
    "raw_shards": _shipped_pool,
    "reference_model": _reference_not_trained,
    "pair_embeddings": _shipped_embeddings,
    "curated_model": _skipped,
    "dfn_scores": _dfn_scores,
    "curation_targets": _curation_targets,
}


# asset → its key figure: (metadata key, format string or function) parts, each shown when the key
# is present (and the part not empty).
FIGURES: dict[str, list[tuple[str, str | Callable[[Any], str]]]] = {
    "raw_shards": [("num_shards", "{:,} shards"), ("bytes", lambda b: f"{b / 2**20:,.0f} MiB")],
    "raw_pairs": [("ok", "{:,} pairs kept"), ("quarantined", "{:,} quarantined")],
    "reference_model": [("final_loss", "loss {:.3f}"), ("steps", "{:,} steps"), ("reused", _reused)],
    "pair_embeddings": [("pairs_embedded", "{:,} pairs embedded"), ("shards_skipped (already done)", "{:,} shards reused"),
                        ("invalid_rows", "{:,} invalid rows")],
    "shard_embeddings": [("ok", "{:,} pairs kept"), ("quarantined", "{:,} quarantined")],
    "curated_model": [("pairs", "{:,} curated pairs"), ("final_loss", "loss {:.3f}"), ("steps", "{:,} steps"),
                      ("reused", _reused)],
    "clusters": [("k", "{:,} clusters"), ("merged", "{:,} merged"), ("action", "{}")],
    "cluster_stats": [("clusters", "{:,} clusters"), ("empty_clusters", "{:,} empty"), ("largest", "largest {:,}")],
    "sample_plan": [("realised", "plan {:,} pairs"), ("distinct", "{:,} distinct"), ("strategy", "{}")],
    "checkpoint": [("final_loss", "loss {:.3f}"), ("steps", "{:,} steps"), ("samples_seen", "{:,} samples seen")],
    "eval_report": [("top1", "top-1 {:.3f}"), ("head", "head {:.3f}"), ("tail", "tail {:.3f}"),
                    ("i2t_r1", "i→t R@1 {:.3f}")],
    "datacomp_subset": [("rows", "subset {:,} uids"), ("distinct", "{:,} distinct")],
    "webdataset_export": [("samples", "{:,} samples"), ("shards", "{:,} shards")],
    "laion_metadata": [("rows", "metadata {:,} rows"), ("samples", "{:,} samples")],
    "learning_curve": [("reports", "{:,} reports")],
    "comparison_report": [("recipes", "{:,} recipes")],
}


def _plain(value: Any) -> Any:
    """A metadata entry's Python value (``MetadataValue.value``) or the value itself."""
    return getattr(value, "value", value)


def key_figure(asset: str, metadata: Mapping[str, Any], seen: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The asset's key figure from its materialisation metadata (``seen``: the latest metadata of
    the assets materialised before it, for lines that name them); unknown assets show their first
    few numbers."""
    values = {k: _plain(v) for k, v in metadata.items()}
    if asset in LINES and (line := LINES[asset](values, seen or {})):
        return line
    parts = []
    for key, fmt in FIGURES.get(asset, []):
        if values.get(key) is not None:
            try:
                part = fmt(values[key]) if callable(fmt) else fmt.format(values[key])
            except (TypeError, ValueError):
                part = f"{key} {values[key]}"
            if part:
                parts.append(part)
    if not parts and asset not in FIGURES:
        numbers = [(k, v) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("dagster/")]
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v:,}" for k, v in numbers[:3]]
    return ", ".join(parts)


def format_seconds(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


@dataclass
class _Step:
    started: float | None = None
    figures: list[str] = field(default_factory=list)
    checks_passed: int = 0
    checks_failed: list[str] = field(default_factory=list)


class StepReporter:
    """Instance event listener: prints one line per finished step of a run."""

    def __init__(self, out: TextIO = sys.stdout, indent: str = "  ",
                 seen: dict[str, dict[str, Any]] | None = None) -> None:
        self.out, self.indent = out, indent
        self.steps: dict[str, _Step] = {}
        self.lines: list[str] = []
        self.seen = seen if seen is not None else {}  # asset name → its latest materialisation's metadata

    def __call__(self, entry: Any) -> None:  # an EventLogEntry
        event = entry.dagster_event
        if event is None or event.step_key is None:
            return
        step = self.steps.setdefault(event.step_key, _Step())
        kind = event.event_type_value
        if kind == "STEP_START":
            step.started = entry.timestamp
        elif kind == "ASSET_MATERIALIZATION":
            materialization = event.step_materialization_data.materialization
            asset = materialization.asset_key.path[-1]
            self.seen[asset] = {k: _plain(v) for k, v in materialization.metadata.items()}
            figure = key_figure(asset, materialization.metadata, self.seen)
            if figure:
                step.figures.append(figure)
        elif kind == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if evaluation.passed:
                step.checks_passed += 1
            else:
                step.checks_failed.append(evaluation.check_name)
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            seconds = entry.timestamp - step.started if step.started is not None else float("nan")
            parts = list(step.figures)
            if step.checks_failed:
                parts.append(f"checks failed: {', '.join(step.checks_failed)}")
            elif step.checks_passed:
                parts.append(f"{step.checks_passed} check{'s' if step.checks_passed > 1 else ''} passed")
            if kind == "STEP_FAILURE":
                parts.insert(0, "FAILED" + (f": {cause}" if (cause := _root_cause(event.step_failure_data.error)) else ""))
            self.emit(f"{self.indent}{_label(event.step_key)} {format_seconds(seconds):>10}   {'; '.join(parts)}")

    def emit(self, line: str) -> None:
        self.lines.append(line)
        print(line, file=self.out, flush=True)


LABEL_WIDTH = 30


def _label(step_key: str) -> str:
    """The step key in a fixed-width column (long ones, such as check steps, shortened in the middle)."""
    if len(step_key) > LABEL_WIDTH:
        half = (LABEL_WIDTH - 1) // 2
        step_key = f"{step_key[:half]}…{step_key[-(LABEL_WIDTH - 1 - half):]}"
    return f"{step_key:<{LABEL_WIDTH}}"


def _root_cause(error: Any) -> str:
    """The first line of the innermost cause of a step's error (the user code's exception)."""
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    lines = (error.message if error is not None else "").strip().splitlines()
    return lines[0] if lines else ""


_CONSOLE: TextIO | None = None


def console() -> TextIO:
    """This process's standard output as it is now, on its own file descriptor. While a run's steps
    execute, Dagster's compute-log capture points fd 1 and 2 at a file and copies it back to the
    terminal with ``tail -F``, which can lose the last lines when the capture ends
    (dagster-io/dagster#23336); the step lines written here bypass it."""
    global _CONSOLE
    if _CONSOLE is None:
        try:
            sys.stdout.flush()
            _CONSOLE = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
            atexit.register(_CONSOLE.close)
        except (AttributeError, OSError, ValueError):  # no real file descriptor (e.g. a captured stream)
            _CONSOLE = sys.stdout
    return _CONSOLE


def execute(job: "dg.JobDefinition", instance: "dg.DagsterInstance", *, verbose: bool, title: str,
            out: TextIO | None = None, seen: dict[str, dict[str, Any]] | None = None,
            ops: Mapping[str, Any] | None = None, **kwargs: Any) -> "dg.ExecuteInProcessResult":
    """``job.execute_in_process`` in ``instance``, a title line, then one line per finished step
    (``seen`` collects each materialised asset's metadata)."""
    out = console() if out is None else out
    print(title, file=out, flush=True)
    run_id = str(uuid.uuid4())
    instance.add_event_listener(run_id, StepReporter(out, seen=seen))
    return job.execute_in_process(run_config=run_config(verbose, ops), instance=instance, raise_on_error=False,
                                  run_id=run_id, **kwargs)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _experiments():
    from dynamics_assets.defs.experiments import EXPERIMENTS

    return EXPERIMENTS


def _missing_curation(defs: "dg.Definitions", job: "dg.JobDefinition", instance: "dg.DagsterInstance") -> list["dg.AssetKey"]:
    """The job's assets never materialised, and everything in the job downstream of them."""
    import dagster as dg

    selected = set(job.asset_layer.selected_asset_keys)
    missing = [k for k in selected if instance.get_latest_materialization_event(k) is None]
    if not missing:
        return []
    downstream = dg.AssetSelection.assets(*missing).downstream().resolve(defs.resolve_asset_graph())
    return sorted(selected & set(downstream), key=lambda k: k.to_user_string())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.epochs and len(args.epochs) == 1 and args.epochs[0].isdigit():
        # the epoch partitions (and the cosine schedule's span) are defined when the code location loads
        os.environ["DYNAMICS_EPOCHS"] = args.epochs[0]
    if "DAGSTER_HOME" not in os.environ:
        sys.exit("DAGSTER_HOME is not set: run `bash scripts/pipeline.sh`, which sets it to data/dagster_home")
    # before any run: a wrong input is refused here in seconds, not after curation and training
    try:
        pool_ops, notes = check_pool_inputs(args)  # no Dagster import: the fastest refusals first
        configure_output(args.verbose, progress=not args.no_progress)
        recipes, epochs = check_run_inputs(args)
    except InputError as e:
        print(f"refused before any work: {e}", file=sys.stderr, flush=True)
        return 2
    for line in notes:
        print(line, flush=True)

    import dagster as dg

    from dynamics_assets.definitions import defs

    instance = dg.DagsterInstance.get()
    started = time.perf_counter()
    seen: dict[str, dict[str, Any]] = {}
    run = lambda job, title, **kw: execute(job, instance, verbose=args.verbose, title=title, seen=seen, **kw)  # noqa: E731

    curation = defs.resolve_job_def("curate_pool")
    selection = _missing_curation(defs, curation, instance) if args.skip_existing else None
    if selection == []:
        print("curate_pool: every asset already materialised (--skip-existing)", flush=True)
    else:
        title = "curate_pool" if selection is None else \
            f"curate_pool (--skip-existing: {', '.join(k.to_user_string() for k in selection)})"
        result = run(curation, title, asset_selection=selection, ops=pool_ops)
        if not result.success:
            print(f"curate_pool failed (run {result.run_id})", file=sys.stderr)
            return 1
    # A pool that ships embeddings without images is planned and exported, not trained on.
    images = _pool_has_images(instance)
    epoch_job = defs.resolve_job_def("train_epoch" if images else "plan_epoch")
    epoch_selection = None
    if args.no_export and images:
        exports = {dg.AssetKey("datacomp_subset"), dg.AssetKey("webdataset_export")}
        epoch_selection = sorted(set(epoch_job.asset_layer.selected_asset_keys) - exports,
                                 key=lambda k: k.to_user_string())
    for recipe in recipes:
        for epoch in epochs:
            key = dg.MultiPartitionKey({"recipe": recipe, "epoch": epoch})
            if args.skip_existing and _materialized(instance, "eval_report" if images else "datacomp_subset", key):
                print(f"train_epoch {recipe} {epoch}: eval_report already materialised (--skip-existing)", flush=True)
                continue
            r = run(epoch_job, f"{epoch_job.name} {recipe} {epoch}", partition_key=key, asset_selection=epoch_selection)
            if not r.success:
                print(f"train_epoch {key} failed (run {r.run_id})", file=sys.stderr)
                return 1
    if not images:
        print(f"\nDone in {format_seconds(time.perf_counter() - started)}: curate_pool, {len(recipes)} recipe(s) × "
              f"{len(epochs)} epoch(s) planned and exported (the pool ships embeddings without images: nothing "
              f"to train on).")
        for line in export_lines(seen) or ["  exports: none materialised in this run"]:
            print(line)
        return 0
    report = run(defs.resolve_job_def("report_recipes"), "report_recipes")
    if not report.success:
        print(f"report_recipes failed (run {report.run_id})", file=sys.stderr)
        return 1
    print(f"\nDone in {format_seconds(time.perf_counter() - started)}: curate_pool, {len(recipes)} recipe(s) × "
          f"{len(epochs)} epoch(s), learning curves, comparison.")
    for line in summary_lines(seen, Path(os.environ.get("DYNAMICS_DATA_DIR", "data")).resolve()):
        print(line)
    return 0


def _path(value: Any) -> str | None:
    value = getattr(value, "path", value)
    return str(value) if value else None


def _code(value: Any) -> str | None:
    """A command recorded as a markdown code block (```bash ... ```): its text."""
    text = getattr(value, "md_str", None) or getattr(value, "value", value)
    if not isinstance(text, str):
        return None
    lines = [line for line in text.strip().splitlines() if not line.startswith("```")]
    return "\n".join(lines).strip() or None


def export_lines(seen: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Where the last recipe × epoch's exports and model are, from what their materialisations
    recorded in this run: the checkpoint's open_clip model folder (``model_dir``, when the
    checkpoint records one), the webdataset export and the open_clip_train command that trains on
    it, the DataComp subset file, and the metadata parquet with its img2dataset command (pools
    that ship embeddings). Nothing for what was not materialised (--no-export, --skip-existing)."""
    lines = []
    checkpoint, export = seen.get("checkpoint", {}), seen.get("webdataset_export", {})
    if model_dir := _path(checkpoint.get("model_dir")):
        lines.append(f"  model:       {model_dir} (open_clip: --model local-dir:{model_dir})")
    if export_dir := _path(export.get("export_dir")):
        what = ", ".join(_count(export[k], noun) for k, noun in (("samples", "sample"), ("shards", "shard"))
                         if isinstance(export.get(k), int))
        lines.append(f"  webdataset:  {export_dir}" + (f" ({what})" if what else ""))
        if command := _code(export.get("command")):
            lines.append(f"  train it:    {command}")
    if subset := _path(seen.get("datacomp_subset", {}).get("subset")):
        lines.append(f"  subset:      {subset} (DataComp's resharder: --subset-file)")
    laion = seen.get("laion_metadata", {})
    if metadata := _path(laion.get("metadata")):
        lines.append(f"  metadata:    {metadata} (the plan's rows of the pool's metadata)")
        if command := _code(laion.get("command")):
            lines.append(f"  download it: {command}")
    return lines


def summary_lines(seen: Mapping[str, Mapping[str, Any]], root: Path) -> list[str]:
    """Where the reports, exports and model are: the paths the last materialisations recorded,
    else the default layout (reports)."""
    def where(asset: str, key: str, default: Path) -> str:
        value = seen.get(asset, {}).get(key)
        return str(getattr(value, "path", value) or default)

    art = root / "artifacts"
    return [
        f"  last report: {where('eval_report', 'accuracy_vs_frequency', art / 'eval_report')}"
        " (report.md beside it; one per recipe × epoch)",
        f"  curves:      {where('learning_curve', 'plot', art / 'learning_curve' / 'learning_curve.png')}",
        f"  comparison:  {where('comparison_report', 'plot', art / 'comparison_report' / 'comparison.png')} (+ comparison.md)",
        *export_lines(seen),
        f"  instance:    {os.environ.get('DAGSTER_HOME', '')}",
        "  Dagster UI:  .venv/bin/dynamics ui  → http://127.0.0.1:3000 (asset lineage, runs, metadata)",
        f"  MLflow UI:   .venv/bin/mlflow ui --backend-store-uri sqlite:///{root / 'mlflow' / 'mlflow.db'} "
        "--host 127.0.0.1 --port 5000",
    ]


def _pool_has_images(instance: "dg.DagsterInstance") -> bool:
    """False when the last raw_pairs materialisation was a pool of embeddings without images."""
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey("raw_pairs"))
    images = event.asset_materialization.metadata.get("images") if event and event.asset_materialization else None
    return getattr(images, "value", True) is not False


def _materialized(instance: "dg.DagsterInstance", asset: str, key: "dg.MultiPartitionKey") -> bool:
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[str(key)]), limit=1).records
    return bool(records)


if __name__ == "__main__":
    sys.exit(main())
