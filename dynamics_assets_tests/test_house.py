"""The house rules: the core imports no dagster and nothing from the Dagster layer; the code
location loads without torch (heavy imports live inside asset bodies); assets pass typed records."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import dynamics_assets

PACKAGE = Path(dynamics_assets.__file__).parent
STAGES = ("io", "model", "engine", "ingest", "embed", "cluster", "sample", "train", "evaluate", "export")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            names.add("." * node.level + (node.module or ""))
    return names


def test_core_imports_neither_dagster_nor_the_dagster_layer():
    offenders = {}
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        bad = {n for n in _imports(path)
               if n.split(".")[0] == "dagster" or n.startswith("dagster_") or n.startswith("dynamics_assets.defs")
               or n.startswith("dynamics_assets.pipeline") or n.startswith("dynamics_assets.definitions")
               or n.startswith("..")}
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert offenders == {}


def test_core_is_organised_by_stage():
    rooms = sorted(p.name for p in (PACKAGE / "core").iterdir() if p.is_dir() and not p.name.startswith("__"))
    assert rooms == sorted(STAGES)
    loose = sorted(p.name for p in (PACKAGE / "core").glob("*.py") if p.name not in ("__init__.py", "records.py"))
    assert loose == []
    assert (PACKAGE / "core" / "sample" / "strategies" / "dynamics.py").is_file()
    defs_rooms = {p.name for p in (PACKAGE / "defs").iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert defs_rooms == set(STAGES) - {"io", "model", "engine"}  # infrastructure rooms


def test_every_sampler_file_opens_with_its_formula_and_paper():
    for path in sorted((PACKAGE / "core" / "sample" / "strategies").glob("*.py")):
        if path.name == "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "Formula" in doc or "formula" in doc, path.name


def test_code_location_loads_without_heavy_libraries():
    code = ("import sys, warnings; warnings.simplefilter('ignore'); import dynamics_assets.definitions as d; "
            "import json; print(json.dumps(sorted(m for m in ('torch', 'open_clip', 'torchvision', 'faiss', 'duckdb', "
            "'mlflow', 'matplotlib', 'ray') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_assets_pass_typed_records_not_dicts():
    from dynamics_assets.definitions import defs

    for spec_key in defs.resolve_asset_graph().get_all_asset_keys():
        assets_def = defs.resolve_assets_def(spec_key)
        out_type = assets_def.op.outs[assets_def.get_output_name_for_asset_key(spec_key)].dagster_type
        assert out_type.typing_type is not dict and "dict" not in str(out_type.typing_type).lower(), spec_key


def test_sampler_settings_know_every_strategy_parameter():
    """sample.spec checks recipes without importing the strategies: its table must match them."""
    import dataclasses

    from dynamics_assets.core.sample import SAMPLERS
    from dynamics_assets.core.sample.spec import STRATEGIES

    assert set(STRATEGIES) == set(SAMPLERS)
    for name, cls in SAMPLERS.items():
        fields = {f.name for f in dataclasses.fields(cls)} - {"name", "dynamic", "cache_dir"}
        assert set(STRATEGIES[name]) == fields, name
