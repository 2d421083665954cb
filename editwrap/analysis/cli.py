"""``editwrap analyze <name>``: the analyses of :mod:`editwrap.analysis`, one module each."""
from __future__ import annotations

import argparse
import importlib
from typing import Any

#: modules that define ``register(subparsers, model_args)``; one missing from this install is skipped
ANALYSES = [
    "editwrap.analysis.trace",
    "editwrap.analysis.delta",
    "editwrap.analysis.rsim",
    "editwrap.analysis.recover",
]


def register(subparsers: Any, model_args: Any) -> None:
    a = subparsers.add_parser("analyze", help="analyses: causal tracing, edit deltas, ...")
    sub = a.add_subparsers(dest="analysis", required=True)
    for name in ANALYSES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        mod.register(sub, model_args)


def add_out(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", default=default, help=f"folder for the JSON and PNG (default {default})")
