"""Atomic writes: a failed write leaves the old file whole and no temporary behind; files get the usual mode."""
import json
import os

import numpy as np
import pytest
import torch

from nni_mrs_plugin.checkpoint import atomic_json, atomic_save, atomic_write


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")

    def half(f):
        f.write(b"new, but")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_atomic_write_gives_the_mode_open_would(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "deep" / "summary.md", lambda f: f.write(b"x"))
        with open(tmp_path / "plain.md", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "deep" / "summary.md").stat().st_mode & 0o777 == (tmp_path / "plain.md").stat().st_mode & 0o777
    assert (tmp_path / "deep" / "summary.md").stat().st_mode & 0o777 == 0o644


def test_atomic_json_and_save_round_trip(tmp_path):
    atomic_json(tmp_path / "r.json", {"acc": np.float32(0.5), "t": torch.tensor(2.0), "n": [1, 2]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"acc": 0.5, "t": 2.0, "n": [1, 2]}
    atomic_save({"w": torch.arange(3)}, tmp_path / "m.pt")
    assert torch.equal(torch.load(tmp_path / "m.pt", weights_only=True)["w"], torch.arange(3))
