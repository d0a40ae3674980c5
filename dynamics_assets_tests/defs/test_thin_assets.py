"""Thin assets (issue 19, item 3): an asset, sensor or check resolves its inputs, makes one core call and
writes its metadata; the logic lives in the core stage it belongs to. Each decorated body, its docstring
left out, is at most LIMIT lines."""
from __future__ import annotations

import ast
from pathlib import Path

import dynamics_assets

DEFS = Path(dynamics_assets.__file__).parent / "defs"
LIMIT = 40  # issue 19: "about 40 lines at most"
DECORATORS = {"asset", "multi_asset", "sensor", "asset_sensor", "asset_check", "schedule"}


def _decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def body_lines(fn: ast.FunctionDef) -> int:
    """Source lines from the first statement after the docstring to the end of the function."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    start = min([body[0].lineno] + [getattr(d, "lineno", body[0].lineno) for d in ast.walk(body[0])])
    return fn.end_lineno - start + 1


def decorated_bodies() -> dict[str, int]:
    """'defs/<file>::<name>' -> body lines, for every Dagster definition in defs/."""
    found = {}
    for path in sorted(DEFS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    any(_decorator_name(d) in DECORATORS for d in node.decorator_list):
                found[f"{path.relative_to(DEFS.parent)}::{node.name}"] = body_lines(node)
    return found


def test_every_asset_body_is_thin():
    bodies = decorated_bodies()
    assert len(bodies) > 20  # the walk found the definitions
    offenders = {name: n for name, n in sorted(bodies.items(), key=lambda kv: -kv[1]) if n > LIMIT}
    for name, n in offenders.items():
        print(f"{n:4d}  {name}")
    assert offenders == {}, f"asset bodies over {LIMIT} lines: {offenders}"


if __name__ == "__main__":
    bodies = decorated_bodies()
    total = sum(len(p.read_text().splitlines()) for p in DEFS.rglob("*.py"))
    print(f"lines in defs/: {total}; definitions: {len(bodies)}")
    for name, n in sorted(bodies.items(), key=lambda kv: -kv[1]):
        if n > 30:
            print(f"{n:4d}  {name}")
