"""The comparison report: interpolation at equal samples / compute, seeds aggregated, incomplete runs left out."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dynamics_assets.core.evaluate.comparison import collect_reports, compare, write_comparison


def write(root, recipe, epoch, samples, flops, top1, tail):
    d = root / recipe / f"epoch-{epoch:03d}"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "zero_shot/top1": top1, "zero_shot/tail": tail, "zero_shot/head": top1, "zero_shot/middle": top1,
        "zero_shot/mean_per_class": top1, "retrieval/i2t_r1": 0.1, "compute/samples_seen": samples,
        "compute/total_flops": flops, "compute/device_seconds": 1.0}))


def test_equal_samples_and_compute_interpolate_and_average_seeds(tmp_path):
    # "full" sees 200 samples per epoch, "half" 100; two seeds of half, one of full.
    for e in (1, 2):
        write(tmp_path, "full.s0", e, 200 * e, 2000 * e, 0.2 * e, 0.1 * e)
        write(tmp_path, "half.s0", e, 100 * e, 1000 * e, 0.3 * e, 0.2 * e)
        write(tmp_path, "half.s1", e, 100 * e, 1000 * e, 0.1 * e, 0.2 * e)
    write(tmp_path, "half.s2", 1, 100, 1000, 0.9, 0.9)  # incomplete: left out
    c = compare(collect_reports(tmp_path), recipe_order=["full", "half"])
    assert c.s_star == 200 and c.f_star == 2000
    full, half = c.rows
    assert full["seeds"] == 1 and half["seeds"] == 2
    assert full["samples/top1"][0] == pytest.approx(0.2)  # full's epoch 1
    assert half["samples/top1"][0] == pytest.approx(0.4)  # mean of 0.6 and 0.2 at epoch 2
    assert half["samples/top1"][1] == pytest.approx(0.2828, abs=1e-3)  # sample sd of (0.6, 0.2)
    assert half["final/tail"][0] == pytest.approx(0.4)
    assert "half.s2" in c.markdown
    paths = write_comparison(c, tmp_path / "out")
    assert paths["png"].stat().st_size > 0 and "equal compute" in paths["md"].read_text()


# --- the statistical comparison (fabricated per-image eval records: tests the machinery only) ---

def _write_outcome(root, key, epoch, flops, correct, labels, train_style=None):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = root / key / f"epoch-{epoch:03d}"
    d.mkdir(parents=True)
    correct = np.asarray(correct, bool)
    (d / "metrics.json").write_text(json.dumps({
        "zero_shot/top1": float(correct.mean()), "zero_shot/tail": float(correct[labels >= 8].mean()),
        "zero_shot/head": float(correct[labels < 2].mean()), "zero_shot/middle": 0.0,
        "zero_shot/mean_per_class": float(correct.mean()), "retrieval/i2t_r1": 0.0,
        "compute/samples_seen": flops / 10, "compute/total_flops": flops, "compute/device_seconds": 1.0}))
    pq.write_table(pa.table({"label": labels, "concept_id": labels, "correct": correct}), d / "per_image.parquet")
    if train_style is not None:
        pq.write_table(pa.table({"label": labels, "concept_id": labels, "correct": np.asarray(train_style, bool)}),
                       d / "per_image_train_style.parquet")
    buckets = ["head"] * 2 + ["middle"] * 6 + ["tail"] * 2
    pq.write_table(pa.table({"concept_id": list(range(10)), "concept": [f"c{i}" for i in range(10)],
                             "train_frequency": [1000 // (i + 1) for i in range(10)], "bucket": buckets,
                             "n": [40] * 10, "accuracy": [0.0] * 10}), d / "per_concept.parquet")


def test_statistical_comparison_against_uniform_at_equal_compute(tmp_path):
    import numpy as np

    from dynamics_assets.core.evaluate.comparison import collect_outcomes, statistical_comparison

    rng = np.random.default_rng(0)
    n = 400
    labels = np.arange(n) % 10
    p = rng.uniform(0.2, 0.5, n)
    for s in range(5):
        u50 = rng.random(n) < p
        u100 = rng.random(n) < p + 0.1
        tail_boost = (rng.random(n) < p + 0.4 * (labels >= 8))  # better on the tail only
        for e, scale in ((1, 0.5), (2, 1.0)):
            _write_outcome(tmp_path, f"uniform-50.s{s}", e, 50.0 * scale, u50, labels, train_style=u50)
            _write_outcome(tmp_path, f"uniform-100.s{s}", e, 100.0 * scale, u100, labels, train_style=u100)
            _write_outcome(tmp_path, f"tailboost-50.s{s}", e, 50.0 * scale, tail_boost, labels)
            _write_outcome(tmp_path, f"same-50.s{s}", e, 50.0 * scale, u50, labels)
            _write_outcome(tmp_path, f"jest-50.s{s}", e, 75.0 * scale, (u50 | u100), labels)
    _write_outcome(tmp_path, "late-50.s0", 1, 25.0, u50, labels)  # never reached the last epoch: left out
    c = statistical_comparison(collect_outcomes(tmp_path), recipe_order=["uniform-100", "uniform-50"])
    assert c.references == ["uniform-100", "uniform-50"] and c.epochs == 2
    rows = {(r["recipe"], r["eval_set"], r["metric"]): r for r in c.rows}
    assert ("late-50", "eval", "top1") not in rows
    same = rows[("same-50", "eval", "top1")]
    assert same["diff"] == 0 and same["verdict"] == "no detectable difference" and same["reference"] == "uniform-50"
    tail = rows[("tailboost-50", "eval", "tail")]
    assert tail["verdict"] == "better" and tail["ci_low"] > 0.2 and tail["seeds"] == 5 and tail["images"] == 80
    assert rows[("tailboost-50", "eval", "head")]["verdict"] == "no detectable difference"
    assert "t=0.50" in rows[("jest-50", "eval", "top1")]["reference"]  # halfway between uniform-50 and -100
    assert rows[("uniform-100", "eval", "top1")]["diff"] == 0
    assert ("uniform-50", "train_style", "top1") in rows and ("same-50", "train_style", "top1") not in rows
    assert all(r["mde"] > 0 for r in c.rows if not r["recipe"].startswith("uniform"))
    assert "Training style" in c.markdown and "| tailboost-50 | 5 | 0.50 |" in c.markdown

    paths = write_comparison(compare(collect_reports(tmp_path)), tmp_path / "out", c)
    import pyarrow.parquet as pq

    assert pq.read_table(paths["statistics.parquet"]).num_rows == len(c.rows)
    assert paths["tail_vs_compute.png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["accuracy_vs_frequency.png"].stat().st_size > 0
    assert "better" in paths["statistics.csv"].read_text()


def test_statistical_comparison_needs_a_uniform_recipe(tmp_path):
    import numpy as np

    from dynamics_assets.core.evaluate.comparison import collect_outcomes, statistical_comparison

    labels = np.arange(20) % 10
    _write_outcome(tmp_path, "dbp-50.s0", 1, 10.0, labels % 2 == 0, labels)
    with pytest.raises(ValueError, match="no uniform reference"):
        statistical_comparison(collect_outcomes(tmp_path))
    with pytest.raises(ValueError, match="no eval report"):
        statistical_comparison([])


def test_block_of_a_run_with_too_few_seeds_says_no_verdict(tmp_path):
    """A 1-seed comparison (a smoke run) still gets its table: no verdicts, no MDE, stated."""
    import numpy as np

    from dynamics_assets.core.evaluate import lineage_table as table
    from dynamics_assets.core.evaluate.comparison import collect_outcomes, statistical_comparison

    rng = np.random.default_rng(5)
    labels = np.arange(200) % 10
    u = rng.random(200) < 0.3
    _write_outcome(tmp_path / "ev", "uniform-100.s0", 1, 100.0, u, labels)
    _write_outcome(tmp_path / "ev", "dyn-50.s0", 1, 100.0, u | (labels >= 8), labels)
    c = statistical_comparison(collect_outcomes(tmp_path / "ev"))
    root = tmp_path / "comparison"
    write_comparison(compare(collect_reports(tmp_path / "ev")), root / "web" / "artifacts" / "comparison_report", c)
    text = table.block(root, ["web"], None)
    assert "3 get no verdict (fewer than 5 seeds)" in text
    assert "nan" not in text and "| – / – / – |" in text


def test_readme_block_from_the_statistics_and_between_the_markers(tmp_path):
    import numpy as np

    from dynamics_assets.core.evaluate.comparison import collect_outcomes, statistical_comparison

    rng = np.random.default_rng(5)
    labels = np.arange(200) % 10
    for s in range(5):  # a verdict needs 5 seeds
        u = rng.random(200) < 0.3
        _write_outcome(tmp_path / "ev", f"uniform-100.s{s}", 1, 100.0, u, labels, train_style=u | (labels < 5))
        _write_outcome(tmp_path / "ev", f"dyn-50.s{s}", 1, 100.0, u | (labels >= 8), labels)
    c = statistical_comparison(collect_outcomes(tmp_path / "ev"))
    root = tmp_path / "comparison"
    structure = {"pool": {"k": 10, "n": 200, "top10_share": 0.31, "gini": 0.42, "purity": 0.6, "nmi": 0.5,
                          "n_tail_concepts": 2, "tail_pool_share": 0.05, "tail_majority_clusters": 1},
                 "recipes": [{"recipe": "dyn-50", "tail_share": 0.08, "ratio_to_pool": 1.6}]}
    write_comparison(compare(collect_reports(tmp_path / "ev")), root / "web" / "artifacts" / "comparison_report", c,
                     texts={"pool_structure.json": json.dumps(structure)})
    from dynamics_assets.core.evaluate import lineage_table as table

    text = table.block(root, ["web"], 125.0)
    assert text.startswith(table.START) and text.rstrip().endswith(table.END)
    assert "| dyn-50 | 1.00× |" in text and "better" in text and "2.1 min" in text
    assert "largest 10% of clusters hold 0.31" in text and "Gini 0.42" in text and "hold 5.0% of the pool" in text
    assert "| 8.00% (1.60×) |" in text
    assert "training style" in text and "held-out style" in text
    readme = "# Title\n\nintro\n<!-- comparison:start -->\nold\n<!-- comparison:end -->\n\n## Next\n"
    new = table.replace_block(readme, text)
    assert "\nold\n" not in new and new.startswith("# Title") and new.endswith("## Next\n") and "dyn-50" in new
    assert table.replace_block("# T\n", text).startswith("# T\n\n" + table.START)

    # dynamics compare-lineage --table-only: the table from the reports already there, into --doc too
    from dynamics_assets import compare_lineage

    doc = tmp_path / "comparison.md"
    doc.write_text(readme)
    args = ["--table-only", "--profile", "web", "--out", str(root), "--doc", str(doc), "--wall-seconds", "125"]
    assert compare_lineage.main(args) == 0
    assert (root / "comparison_table.md").read_text() == text
    assert doc.read_text() == new


def test_comparison_config_merges_the_learner_and_narrows(tmp_path):
    from dynamics_assets.core.evaluate import lineage_config as config

    spec = {"learner": {"epochs": 2, "training": {"model_name": "m", "lr": 0.01}}, "seeds": [0, 1, 2, 3, 4],
            "recipes": {"uniform-100": {"sampler": {"strategy": "uniform", "budget": 1.0}},
                        "jest-50": {"sampler": {"strategy": "uniform", "budget": 1.0},
                                    "training": {"selection": "jest", "lr": 0.005}}}}
    out = config.build(spec, 2, ["uniform-100", "jest-50"])
    assert out["seeds"] == [0, 1]
    assert out["recipes"]["jest-50"]["training"] == {"model_name": "m", "lr": 0.005, "selection": "jest"}
    assert out["recipes"]["uniform-100"]["training"] == {"model_name": "m", "lr": 0.01}
    with pytest.raises(ValueError, match="unknown recipe"):
        config.build(spec, None, ["nope"])


# --- dynamics compare-lineage (dynamics_assets/compare_lineage.py): what it would run, nothing run ---

ROOT = Path(__file__).resolve().parents[3]


def _comparison_file(tmp_path, **learner):
    spec = {"learner": {"epochs": 2, "training": {"model_name": "m"}, **learner}, "pool": {"pairs": 300},
            "profiles": ["web", "concept"], "seeds": [0, 1, 2],
            "recipes": {"uniform-100": {"sampler": {"strategy": "uniform", "budget": 1.0}},
                        "dynamics-exact-50": {"sampler": {"strategy": "dynamics", "budget": 0.5}}}}
    path = tmp_path / "comparison.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "--seeds 0: expected a number of seeds ≥ 1"),
    (["--recipes", "uniform-100", "nope"], "unknown recipe(s) ['nope']"),
    (["--config", "{missing}"], "No such file"),
    (["--doc", "{missing}"], "--doc {missing}: no such file"),
    (["--wall-seconds", "3"], "--wall-seconds goes with --table-only"),
    (["--config", "{no_epochs}"], "learner.epochs must be an integer ≥ 1 (got None)"),
])
def test_compare_lineage_refuses_bad_arguments_with_exit_2(args, message, tmp_path, capsys):
    from dynamics_assets import compare_lineage

    config = _comparison_file(tmp_path)
    no_epochs = tmp_path / "no_epochs.yaml"
    no_epochs.write_text(yaml.safe_dump({"recipes": {"uniform-100": {}}}))
    fill = {"missing": str(tmp_path / "missing.yaml"), "no_epochs": str(no_epochs)}
    args = [a.format(**fill) for a in args]
    if "--config" not in args:
        args += ["--config", str(config)]
    out = tmp_path / "out"
    assert compare_lineage.main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynamics compare-lineage: ") and message.format(**fill) in err, err
    assert not out.exists()  # refused before anything is written


def test_compare_lineage_refuses_an_unknown_profile_or_option(tmp_path, capsys):
    from dynamics_assets import compare_lineage

    for args in (["--profile", "laion"], ["--no-such-option"]):
        with pytest.raises(SystemExit) as e:
            compare_lineage.main(args)
        assert e.value.code == 2
    assert "invalid choice: 'laion'" in capsys.readouterr().err


def test_compare_lineage_commands_take_the_epochs_from_the_comparison_file(tmp_path):
    """Each profile: the pipeline with --epochs N from learner.epochs (no DYNAMICS_EPOCHS), its pool
    options, its own data root, instance and experiments file; side by side, one thread each."""
    from dynamics_assets import compare_lineage, pipeline
    from dynamics_assets.core.evaluate import lineage_config

    spec = lineage_config.load(ROOT / "data" / "comparison.yaml")
    n = spec["learner"]["epochs"]
    base = {"PATH": "/bin", "DYNAMICS_EPOCHS": "9", "DAGSTER_HOME": "/elsewhere", "DYNAMICS_DATA_DIR": "/elsewhere"}
    runs = compare_lineage.profile_runs(spec, ["web", "concept"], tmp_path, ["--verbose"], parallel=True,
                                        base_env=base, python="python")
    assert [r.profile for r in runs] == ["web", "concept"]
    web = runs[0]
    pool = [a for k, v in spec["pool"].items() for a in ("--pool-option", f"{k}={v}")]
    assert web.command == ["python", "-m", "dynamics_assets.pipeline", "--recipes", "all", "--skip-existing",
                           "--no-export", "--no-progress", "--epochs", str(n), "--pool-option", "profile=web",
                           *pool, "--verbose"]
    args = pipeline.build_parser().parse_args(web.command[3:])  # the pipeline reads it as meant
    assert args.epochs == [str(n)] and args.recipes == ["all"] and args.skip_existing and args.no_export
    assert "profile=web" in args.pool_options and args.verbose
    assert web.env == {"PATH": "/bin", "DYNAMICS_DATA_DIR": str(tmp_path / "web"),
                       "DAGSTER_HOME": str(tmp_path / "web" / "dagster_home"),
                       "DYNAMICS_EXPERIMENTS": str(tmp_path / "web" / "experiments.yaml"),
                       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert web.log == tmp_path / "web" / "compare.log"
    serial = compare_lineage.profile_runs(spec, ["concept"], tmp_path, base_env=base)[0]
    assert "OMP_NUM_THREADS" not in serial.env and "profile=concept" in serial.command
    assert serial.env["DAGSTER_HOME"] == str(tmp_path / "concept" / "dagster_home")


def test_compare_lineage_writes_each_profiles_experiments_file_then_runs(tmp_path, monkeypatch, capsys):
    from dynamics_assets import compare_lineage

    config = _comparison_file(tmp_path)
    seen = {}

    def fake_execute(runs, parallel):
        seen["runs"], seen["parallel"] = list(runs), parallel
        return []

    monkeypatch.setattr(compare_lineage, "execute", fake_execute)
    monkeypatch.delenv("DAGSTER_YAML", raising=False)
    out = tmp_path / "out"
    code = compare_lineage.main(["--config", str(config), "--out", str(out), "--seeds", "2",
                                 "--recipes", "uniform-100", "--", "--verbose"])
    assert code == 1 and "no table: no comparison report under" in capsys.readouterr().err  # nothing ran
    assert seen["parallel"] and [r.profile for r in seen["runs"]] == ["web", "concept"]  # the file's profiles
    for run in seen["runs"]:
        assert run.command[-3:] == ["--pool-option", "pairs=300", "--verbose"]
        assert run.command[run.command.index("--epochs") + 1] == "2"
        written = yaml.safe_load(run.experiments.read_text())
        assert written["seeds"] == [0, 1] and list(written["recipes"]) == ["uniform-100"]
        assert written["recipes"]["uniform-100"]["training"] == {"model_name": "m"}
        assert (run.home / "dagster.yaml").read_text() == (ROOT / "dagster.yaml").read_text()
        assert sorted(p.name for p in run.folder.iterdir()) == ["dagster_home", "experiments.yaml"]  # no temp file
    compare_lineage.main(["--config", str(config), "--out", str(out), "--profile", "concept", "--serial"])
    assert not seen["parallel"] and [r.profile for r in seen["runs"]] == ["concept"]
    assert len(yaml.safe_load((out / "concept" / "experiments.yaml").read_text())["seeds"]) == 3


def test_compare_lineage_runs_profiles_side_by_side_or_in_turn_into_their_logs(tmp_path, capsys):
    import os
    import sys

    from dynamics_assets.compare_lineage import ProfileRun, execute

    def run(profile, code):
        (tmp_path / profile).mkdir(exist_ok=True)
        script = f"import os; print('{profile}', os.environ['OMP_NUM_THREADS']); raise SystemExit({code})"
        return ProfileRun(profile, tmp_path / profile, [sys.executable, "-c", script],
                          {**os.environ, "OMP_NUM_THREADS": "1"})

    runs = [run("web", 0), run("concept", 3)]
    assert execute(runs, parallel=True) == ["concept"]
    assert (tmp_path / "web" / "compare.log").read_text() == "web 1\n"
    assert (tmp_path / "concept" / "compare.log").read_text() == "concept 1\n"
    captured = capsys.readouterr()
    assert "web 1" not in captured.out and f"concept failed: see {tmp_path / 'concept' / 'compare.log'}" in captured.err
    assert execute(runs, parallel=False) == ["concept"]
    assert capsys.readouterr().out == "web 1\nconcept 1\n"  # in turn: on the terminal as well
    assert (tmp_path / "web" / "compare.log").read_text() == "web 1\n"
