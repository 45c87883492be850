"""toolrl.io's atomic folder writes: what a killed writer leaves behind is cleaned up by the next."""

from __future__ import annotations

from pathlib import Path

from toolrl.io import atomic_dir


def test_atomic_dir_removes_what_a_killed_writer_of_the_same_folder_left(tmp_path: Path) -> None:
    left = tmp_path / ".model.abc123.tmp"  # a checkpoint write killed before its swap
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"\0" * 100)
    others = [tmp_path / ".model2.x.tmp", tmp_path / ".base.y.tmp"]  # other folders' writers
    for d in others:
        d.mkdir()
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    assert (tmp_path / "model" / "config.json").read_text() == "{}"
    assert not left.exists()
    assert all(d.exists() for d in others)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", *(d.name for d in others)])
