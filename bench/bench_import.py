"""Benchmark: the cost of loading the code location against the cost of ``import dagster``.

Every Dagster process that loads the code location (``dagster dev``'s code server, ``dg check
defs``, each run worker, the daemon's sensors) pays for ``import dynamics_assets.definitions``.
Heavy libraries (torch, open_clip, mlflow, faiss) should be imported inside the assets that need
them, so that loading the definitions costs little more than Dagster itself.

Target: ``import dynamics_assets.definitions`` ≤ 3× the wall time of ``import dagster``, torch not
imported.

    .venv/bin/python bench/bench_import.py [--repeats 3]

Each case runs in a fresh ``python -c`` (wall time of the whole process, median of the repeats),
whose peak RSS comes from ``os.wait4`` (that child's own ``ru_maxrss``); the child reports its own
import time and which heavy modules it ended up importing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "open_clip", "mlflow", "faiss", "duckdb", "pyarrow", "matplotlib")
TARGET_RATIO = 3.0

CHILD = """
import json, sys, time
t = time.perf_counter()
import {module}
seconds = time.perf_counter() - t
print(json.dumps({{"import_s": seconds, "modules": len(sys.modules),
                  "heavy": [m for m in {heavy!r} if m in sys.modules], "torch": "torch" in sys.modules}}))
"""


def run_once(module: str) -> dict:
    """One fresh interpreter importing ``module``: wall seconds, peak RSS (MiB), the child's report."""
    code = CHILD.format(module=module, heavy=HEAVY)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise SystemExit(f"`python -c 'import {module}'` failed ({child.returncode}):\n{stderr[-3000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, **report}  # ru_maxrss: KiB on Linux


def measure(module: str, repeats: int) -> dict:
    runs = [run_once(module) for _ in range(repeats)]
    return {
        "module": module,
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "import_s": statistics.median(r["import_s"] for r in runs),
        "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
        "modules": runs[-1]["modules"],
        "heavy": runs[-1]["heavy"],
        "torch": runs[-1]["torch"],
        "walls": [round(r["wall_s"], 2) for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args(argv)

    run_once("dagster")  # warm the page cache and the .pyc files once, unmeasured
    base = measure("dagster", args.repeats)
    defs = measure("dynamics_assets.definitions", args.repeats)
    ratio = defs["wall_s"] / base["wall_s"]

    label = 'python -c "import …"'
    print(f"{label:<40} {'wall (median)':>14} {'import':>9} {'peak RSS':>10} "
          f"{'modules':>8}  torch  heavy modules imported")
    for r in (base, defs):
        print(f"{r['module']:<40} {r['wall_s']:>12.2f} s {r['import_s']:>7.2f} s {r['peak_rss_mib']:>6.0f} MiB "
              f"{r['modules']:>8}  {'yes' if r['torch'] else 'no ':<5}  {', '.join(r['heavy']) or '-'}")
    print(f"runs (wall s): dagster {base['walls']}, definitions {defs['walls']}")
    verdict = "ok" if ratio <= TARGET_RATIO and not defs["torch"] else "over target"
    print(f"ratio definitions / dagster: {ratio:.2f}× wall, {defs['peak_rss_mib'] / base['peak_rss_mib']:.2f}× peak RSS "
          f"(target ≤ {TARGET_RATIO:.0f}× wall, torch not imported): {verdict}")
    if args.json:
        print(json.dumps({"dagster": base, "definitions": defs, "ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
