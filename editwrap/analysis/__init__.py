"""Analyses of edits and of the model they edit (``editwrap analyze ...``).

Each analysis is one module with a function that takes a wrapped model (or saved stacks) and returns
a JSON-ready dict, a plotting function writing a PNG, and ``register(subparsers, model_args)`` adding
its ``editwrap analyze <name>`` command (listed in :data:`editwrap.analysis.cli.ANALYSES`). Every
command writes ``<name>.json`` and ``<name>.png`` under ``--out``.
"""
