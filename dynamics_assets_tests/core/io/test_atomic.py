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
