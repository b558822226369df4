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


def _calls(path: Path, name: str) -> list[ast.Call]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]


def test_no_caller_outside_models_tests_a_model_class():
    """The model contract carries what callers need (issue #30): ``isinstance(model, …)`` lives
    in ``models/`` only (telling a model from its name, ``str``, is not a class test)."""
    offenders = [
        f"{path.relative_to(PACKAGE)}:{call.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if (PACKAGE / "models") not in path.parents
        for call in _calls(path, "isinstance")
        if isinstance(call.args[0], ast.Name) and call.args[0].id == "model"
        and not (isinstance(call.args[1], ast.Name) and call.args[1].id == "str")
    ]  # fmt: skip
    assert not offenders, offenders


def test_settings_are_built_from_text_only_at_the_command_line():
    """``load_config`` (YAML and flag text → settings) runs for the command line only; commands
    hand each other typed settings (``config.validated``)."""
    users = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if _calls(path, "load_config") and path.name not in ("config.py", "cli.py")
    ]
    assert not users, users
