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
# the core's stage folders, in pipeline order: a module imports from its own stage or an earlier one
STAGES = ("io", "engine", "model", "ingest", "embed", "cluster", "sample", "train", "evaluate", "export")


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


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts  # ("dynamics_assets", "core", ...)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(core: Path) -> dict[str, set[str]]:
    """Module → the modules of ``core`` it imports, from every import statement anywhere in its file
    (function-local and ``TYPE_CHECKING`` ones included): ``import a.b``, ``from a.b import c``
    (an edge to ``a.b``, and to ``a.b.c`` when that is a module), relative imports resolved."""
    files = {_module_name(p, core.parent): p for p in sorted(core.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets |= {base} | {f"{base}.{a.name}" for a in node.names}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(circles)


def arrows_up(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a later stage folder (``STAGES`` order): ``dynamics_assets.core.<stage>...``."""
    def stage(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 2 and parts[2] in STAGES else None

    return sorted((m, t) for m, targets in graph.items() for t in targets
                  if stage(m) and stage(t) and STAGES.index(stage(t)) > STAGES.index(stage(m)))


def test_the_import_graph_finds_circles_and_arrows_up(tmp_path):
    """The checker itself, on a made-up core: a lazy import closes a circle, a relative import counts."""
    core = tmp_path / "dynamics_assets" / "core"
    for folder in ("io", "model", "train", "evaluate"):
        (core / folder).mkdir(parents=True)
        (core / folder / "__init__.py").write_text("")
    (core / "__init__.py").write_text("")
    (core / "io" / "a.py").write_text("import os\n")
    (core / "model" / "b.py").write_text("from dynamics_assets.core.io import a\n"
                                         "def f():\n    from dynamics_assets.core.model.c import g\n")
    (core / "model" / "c.py").write_text("from .b import f\ndef g(): pass\n")
    (core / "train" / "d.py").write_text("from dynamics_assets.core.evaluate.e import h\n")
    (core / "evaluate" / "e.py").write_text("import dynamics_assets.core.train.d\ndef h(): pass\n")
    graph = import_graph(core)
    assert graph["dynamics_assets.core.model.b"] == {"dynamics_assets.core.io", "dynamics_assets.core.io.a",
                                                     "dynamics_assets.core.model.c"}
    assert import_circles(graph) == [["dynamics_assets.core.evaluate.e", "dynamics_assets.core.train.d"],
                                     ["dynamics_assets.core.model.b", "dynamics_assets.core.model.c"]]
    assert arrows_up(graph) == [("dynamics_assets.core.train.d", "dynamics_assets.core.evaluate.e")]


def test_core_has_no_import_circle_and_no_arrow_up_between_stages():
    """Every module of the core imports only from its own stage folder or an earlier one (``STAGES``:
    io, engine, model, ingest, embed, cluster, sample, train, evaluate, export), and no modules import
    each other round a circle — counting every import statement, function-local ones included, so a
    lazy import cannot hide a circle. A piece two modules share lives in the lower one's stage (e.g.
    the held-out rule in ``ingest.held_out``, the epoch rules in ``train.job``)."""
    graph = import_graph(PACKAGE / "core")
    assert len(graph) > 50 and any(graph.values()), "the graph must see the core's modules and their imports"
    circles = import_circles(graph)
    ups = arrows_up(graph)
    assert not circles, "import circles (strongly connected modules):\n" + "\n".join(" <-> ".join(c) for c in circles)
    assert not ups, "arrows up (a stage importing a later stage):\n" + "\n".join(f"{m} -> {t}" for m, t in ups)


def test_tests_mirror_the_stage_folders():
    """Core tests live in dynamics_assets_tests/core/<stage>/, asset tests in dynamics_assets_tests/defs/[<stage>/],
    each folder named like a stage of the package; none sits loose in core/ or defs/."""
    tests = Path(__file__).parent
    core_stages = {p.name for p in (PACKAGE / "core").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    defs_stages = {p.name for p in (PACKAGE / "defs").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert not list((tests / "core").glob("test_*.py")), "core tests belong in core/<stage>/"
    core_dirs = {p.name for p in (tests / "core").iterdir() if p.is_dir() and p.name != "__pycache__"}
    defs_dirs = {p.name for p in (tests / "defs").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert core_dirs <= core_stages, f"test folders without a core stage: {sorted(core_dirs - core_stages)}"
    assert defs_dirs <= defs_stages, f"test folders without a defs stage: {sorted(defs_dirs - defs_stages)}"
    # every stage that holds logic is tested in its own folder
    assert {"ingest", "embed", "cluster", "sample", "train", "evaluate"} <= core_dirs
    for folder in [*(tests / "core").iterdir(), *(tests / "defs").iterdir()]:
        if folder.is_dir() and folder.name != "__pycache__":
            assert (folder / "__init__.py").exists(), folder
            assert list(folder.glob("test_*.py")), f"{folder} has no tests"
