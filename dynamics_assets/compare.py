"""`dynamics compare`: run (or resume) the comparison design and write its report.

    python -m dynamics_assets.compare                       # the primary design on the synthetic web pool
    python -m dynamics_assets.compare --seeds 2 --recipes uniform-100 uniform-50 dynamics-exact-50
    python -m dynamics_assets.compare --source SHARDS --eval LABELLED_SET   # on your own pool
    python -m dynamics_assets.compare --gate-grid           # no training: could any clustering carry the tail?

The design (recipes, seeds, learner, pool) is data/design.yaml (``--config``); results go to
``--out`` (default $DYNAMICS_DATA_DIR/design or data/design), one file per finished run, so an
interrupted comparison continues where it stopped. The report is ``<out>/report.md`` and ``report.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dynamics compare", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--config", default=str(ROOT / "data" / "design.yaml"), help="the design file (default data/design.yaml)")
    p.add_argument("--out", help="results folder (default $DYNAMICS_DATA_DIR/design, else data/design)")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: the file's)")
    p.add_argument("--recipes", nargs="+", help="only these recipes (default: the file's recipes less its `secondary` list)")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the file's learner.epochs)")
    p.add_argument("--source", help="your pool: a folder of webdataset shards (default: the synthetic pool)")
    p.add_argument("--eval", dest="eval_dir", help="your labelled evaluation set (ImageFolder or clip_benchmark wds)")
    p.add_argument("--doc", help="also write the report into this Markdown file's design block (docs/comparison.md)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: the learner and the pool's features on the GPU")
    p.add_argument("--part", help="I/N: train only every N-th run starting at I (N processes share the design); "
                                  "no report: a last call without --part writes it")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--gate-grid", action="store_true",
                   help="train nothing: the pool gate (plan tail lifts) for k at ¼…8× the design's k and merges "
                        "none / calibrated / 0.70, written to <out>/gate_grid.md (seconds to minutes)")
    args = p.parse_args(argv)
    from dynamics_assets.core.evaluate.design import DesignConfig, gate_grid, run_design

    try:
        config = DesignConfig.from_yaml(args.config, seeds=args.seeds, recipes=args.recipes, epochs=args.epochs)
    except (ValueError, KeyError, OSError) as e:
        print(f"dynamics compare: {e}", file=sys.stderr)
        return 2
    if args.source and not args.eval_dir:
        print("dynamics compare: --source needs --eval (a labelled evaluation set)", file=sys.stderr)
        return 2
    part = None
    if args.part:
        try:
            i, n = (int(v) for v in args.part.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            print(f"dynamics compare: --part {args.part!r}: expected I/N with 0 ≤ I < N", file=sys.stderr)
            return 2
        part = (i, n)
    out = args.out or str(Path(os.environ.get("DYNAMICS_DATA_DIR", ROOT / "data")) / "design")
    if args.gate_grid:
        try:
            gate_grid(out, config, source=args.source, eval_dir=args.eval_dir, device=args.device,
                      progress=lambda line: print(line, flush=True))
        except ValueError as e:
            print(f"dynamics compare: {e}", file=sys.stderr)
            return 2
        return 0
    summary = run_design(out, config, source=args.source, eval_dir=args.eval_dir, threads=args.threads, device=args.device,
                         part=part, progress=lambda line: print(line, flush=True))
    if args.doc and summary is not None:
        from dynamics_assets.core.evaluate.design_report import write_doc_block
        write_doc_block(args.doc, summary)
        print(f"wrote the report into {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
