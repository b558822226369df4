"""Solvers: classic ones as plain functions, and the registry that names and configures them.

Every classic solver has the signature ``solver(model, x, grid, cond=None, *, options) -> Tensor``
(``x`` at ``grid[0]``, result at ``grid[-1]``), makes one model call per grid point except the
last (Heun: two per step), and is differentiable. Its module declares it as a
:class:`ClassicSolver` (function, options, calls per step) and :data:`SOLVERS` names it
(:func:`register_classic_solver` from outside the package).
"""

from .classic import ClassicSolver, SolverOption
from .dpm_solver import ddim, dpm_solver_pp
from .generalized import GeneralizedSolver
from .heun import heun
from .ipndm import ipndm
from .registry import SOLVERS, register_classic_solver
from .spec import SolverSpec
from .spec_text import parse_solver_spec
from .unipc import unipc

__all__ = [
    "SOLVERS",
    "ClassicSolver",
    "GeneralizedSolver",
    "SolverOption",
    "SolverSpec",
    "ddim",
    "dpm_solver_pp",
    "heun",
    "ipndm",
    "parse_solver_spec",
    "register_classic_solver",
    "unipc",
]
