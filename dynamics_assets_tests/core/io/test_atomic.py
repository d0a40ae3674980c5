"""Atomic writes leave the target whole or absent, and keep the target's extension."""
from __future__ import annotations

import numpy as np
import pytest

from dynamics_assets.core.io.atomic import atomic_dir, atomic_path, save_npy, write_json


def test_save_npy_writes_the_target_and_no_temporary(tmp_path):
    save_npy(tmp_path / "a.npy", np.arange(5))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_failed_write_keeps_the_old_file(tmp_path):
    write_json(tmp_path / "m.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "m.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert (tmp_path / "m.json").read_text().strip().endswith("}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_atomic_dir_replaces_whole_directory(tmp_path):
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "y").write_text("2")
            raise RuntimeError("crash")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["x"]
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "z").write_text("3")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_marked_block_is_replaced_appended_or_refused(tmp_path):
    from dynamics_assets.core.io.atomic import write_marked_block
    doc = tmp_path / "doc.md"
    doc.write_text("# T\n\n<!-- b:start -->\nold\n<!-- b:end -->\n\n## Next\n")
    write_marked_block(doc, "<!-- b:start -->", "<!-- b:end -->", "<!-- b:start -->\nnew\n<!-- b:end -->\n")
    assert doc.read_text() == "# T\n\n<!-- b:start -->\nnew\n<!-- b:end -->\n\n## Next\n"
    bare = tmp_path / "bare.md"
    bare.write_text("# T\n")
    write_marked_block(bare, "<!-- b:start -->", "<!-- b:end -->", "<!-- b:start -->\nx\n<!-- b:end -->\n")
    assert bare.read_text() == "# T\n\n<!-- b:start -->\nx\n<!-- b:end -->\n"
    with pytest.raises(ValueError, match="bare.md: no <!-- c:start -->"):
        write_marked_block(bare, "<!-- c:start -->", "<!-- c:end -->", "y", append=False)
    assert bare.read_text().endswith("x\n<!-- b:end -->\n")  # refused: the file is unchanged
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
