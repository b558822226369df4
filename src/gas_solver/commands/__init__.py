"""The commands of ``gas-solver``, one module each: its validated config (the fields are the
flags and the YAML keys, :mod:`gas_solver.config`) and its ``run_*`` function.

This is the only layer that reads configs and writes reports; :mod:`gas_solver.cli` parses the
command line and dispatches here, and no library module imports it.
"""
