"""Copies and edits of a teacher set's files, for the tests that damage them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def copy_files(folder: Path, tmp_path: Path) -> Path:
    """A copy of the files (not subfolders) of ``folder`` under ``tmp_path``, same name."""
    copy = tmp_path / folder.name
    copy.mkdir()
    for path in folder.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    return copy


def edit_manifest(folder: Path, change: Callable[[dict], object]) -> None:
    """Apply ``change`` to the parsed ``manifest.json`` of ``folder`` and write it back."""
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
