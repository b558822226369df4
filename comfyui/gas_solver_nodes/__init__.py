"""gas-solver's ComfyUI node: ``GAS Solver Loader`` (a trained GS file → SAMPLER and SIGMAS).

Link or copy this folder into ``ComfyUI/custom_nodes/`` and install gas-solver into ComfyUI's
Python (``pip install -e /path/to/gas-solver``). Solver files (``gas-solver export --solver RUN
--format k-diffusion --out NAME.json``) go in ``ComfyUI/models/gas_solvers/``, or give a path.
Workflow: GAS Solver Loader (model, solver file) → ``sampler`` and ``sigmas`` into
``SamplerCustom`` (or ``SamplerCustomAdvanced``), unchanged.

This is the one file that imports ComfyUI; it only adapts types. Every decision (the file, the
checks of the model and of the sigmas, ComfyUI's noise scaling) is in
``gas_solver.export.comfyui``, tested without ComfyUI. Written against ComfyUI ``a125cd8``
(2025-10-12): ``comfy_api/latest`` (``io.ComfyNode``, ``io.Schema``, ``io.NodeOutput``,
``ComfyExtension``, ``comfy_entrypoint``; ``nodes.py::load_custom_node`` takes
``NODE_CLASS_MAPPINGS`` when a module has one, else ``comfy_entrypoint``), ``comfy/samplers.py``
(``KSAMPLER(sampler_function)``), ``folder_paths.py`` (``add_model_folder_path``,
``get_folder_paths``, ``models_dir``), ``comfy/model_patcher.py`` (``get_model_object``).
ComfyUI before the node API (``comfy_api.latest.io``) gets the same node through
``NODE_CLASS_MAPPINGS``.
"""

from __future__ import annotations

import logging
import os

import comfy.samplers
import folder_paths

try:
    from gas_solver.export import comfyui as gas
except ImportError as err:  # the node is a front end of the gas-solver package
    raise ImportError(
        "GAS Solver Loader needs the gas-solver package in ComfyUI's Python environment: "
        "pip install -e /path/to/gas-solver (the repository this folder comes from)"
    ) from err

try:
    from comfy_api.latest import ComfyExtension, io
except ImportError:  # ComfyUI before the V3 node API (2025-07)
    ComfyExtension = io = None

folder_paths.add_model_folder_path(
    gas.SOLVER_FOLDER, os.path.join(folder_paths.models_dir, gas.SOLVER_FOLDER), is_default=True
)

MODEL_TOOLTIP = "the model the solver was trained for (its sampling is checked against the file)"
FILE_TOOLTIP = (
    "a .json of `gas-solver export --format k-diffusion`: a path, or a name in models/gas_solvers"
)


def _folders() -> list[str]:
    return folder_paths.get_folder_paths(gas.SOLVER_FOLDER)


def _load(model, solver_file):
    """``(SAMPLER, SIGMAS, description)`` of the file ``solver_file`` names, checked against the
    ``MODEL``'s sampling (``ModelPatcher.get_model_object``, patches such as ModelSamplingSD3
    included)."""
    path = gas.resolve_solver_file(solver_file, _folders())
    loaded = gas.load_for_comfyui(path, model.get_model_object("model_sampling"))
    logging.info("%s: %s (%s)", gas.DISPLAY_NAME, loaded.label, path)
    return comfy.samplers.KSAMPLER(loaded.sample), loaded.sigmas, loaded.label


if io is not None:

    class GASSolverLoader(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id=gas.NODE_ID,
                display_name=gas.DISPLAY_NAME,
                category=gas.CATEGORY,
                description=gas.DESCRIPTION,
                inputs=[
                    io.Model.Input("model", tooltip=MODEL_TOOLTIP),
                    io.String.Input("solver_file", default="", tooltip=FILE_TOOLTIP),
                ],
                outputs=[
                    io.Sampler.Output("sampler", display_name="sampler"),
                    io.Sigmas.Output("sigmas", display_name="sigmas"),
                    io.String.Output("description", display_name="description"),
                ],
            )

        @classmethod
        def execute(cls, model, solver_file):
            return io.NodeOutput(*_load(model, solver_file))

        @classmethod
        def fingerprint_inputs(cls, model, solver_file):
            return gas.solver_file_fingerprint(solver_file, _folders())

        def get_sigmas(self, model, solver_file):
            """The ``SIGMAS`` alone, as ``(sigmas,)`` (other node packs call this name)."""
            return (_load(model, solver_file)[1],)

    class GASSolverExtension(ComfyExtension):
        async def get_node_list(self):
            return [GASSolverLoader]

    async def comfy_entrypoint():
        return GASSolverExtension()

else:

    class GASSolverLoader:
        DESCRIPTION = gas.DESCRIPTION
        CATEGORY = gas.CATEGORY
        RETURN_TYPES = ("SAMPLER", "SIGMAS", "STRING")
        RETURN_NAMES = ("sampler", "sigmas", "description")
        FUNCTION = "load"

        @classmethod
        def INPUT_TYPES(cls):
            return {
                "required": {
                    "model": ("MODEL", {"tooltip": MODEL_TOOLTIP}),
                    "solver_file": ("STRING", {"default": "", "tooltip": FILE_TOOLTIP}),
                }
            }

        @classmethod
        def IS_CHANGED(cls, model, solver_file):
            return gas.solver_file_fingerprint(solver_file, _folders())

        def load(self, model, solver_file):
            return _load(model, solver_file)

        def get_sigmas(self, model, solver_file):
            """The ``SIGMAS`` alone, as ``(sigmas,)`` (other node packs call this name)."""
            return (_load(model, solver_file)[1],)

    NODE_CLASS_MAPPINGS = {gas.NODE_ID: GASSolverLoader}
    NODE_DISPLAY_NAME_MAPPINGS = {gas.NODE_ID: gas.DISPLAY_NAME}
