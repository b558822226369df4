"""Atomic writes: complete files with ordinary permissions, nothing left behind on failure."""

from __future__ import annotations

import os
import stat

import pytest

from gas_solver.outputs import atomic_write


def test_atomic_write_gives_umask_permissions(tmp_path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    path = atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("hello"))
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    path = tmp_path / "b.txt"
    path.write_text("old")

    def fail(tmp) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["b.txt"]
