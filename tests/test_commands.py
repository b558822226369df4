"""The layering of the package: only the command line and the commands layer import
``gas_solver.commands``; every library module (models, solvers, data, training, metrics,
evaluation, export, ...) stays usable without it."""

from __future__ import annotations

import ast
from pathlib import Path

import gas_solver

PACKAGE = Path(gas_solver.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """The absolute names of the ``gas_solver`` modules ``path`` imports (relative imports
    resolved against the module's package)."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])  # gas_solver, training, ...
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _is_commands(name: str) -> bool:
    return name == "gas_solver.commands" or name.startswith("gas_solver.commands.")


def test_no_library_module_imports_the_commands():
    allowed = {PACKAGE / "cli.py"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in allowed or (PACKAGE / "commands") in path.parents:
            continue
        if any(_is_commands(name) for name in _imported_modules(path)):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders, f"library modules importing gas_solver.commands: {offenders}"


def test_the_check_resolves_relative_imports():
    names = _imported_modules(PACKAGE / "training" / "trainer.py")
    assert "gas_solver.data.teacher_set" in names  # `from ..data.teacher_set import TeacherSet`
    assert "gas_solver.training.ema" in names  # `from .ema import EMA`
    assert "gas_solver.images.to_images" in names  # `from ..images import ..., to_images`
    assert any(_is_commands(name) for name in _imported_modules(PACKAGE / "cli.py"))
    init = _imported_modules(PACKAGE / "evaluation" / "__init__.py")
    assert "gas_solver.evaluation.compare" in init  # `from .compare import ...` in a package
