"""Scoped weight deltas: a side-car delta that applies only to inputs routed to its edit.

The payload is what a weight editor made (ROME, MEMIT, AlphaEdit, FT-M: low-rank or dense parts
per module) plus the sentence embeddings of the edit's prompts (with ``scope_match="relation"``, of the prompts
without their subject, and the subjects, which an input must name). :mod:`editwrap.ops.scope` routes
each row of a forward to at most one scope by embedding similarity; the hook of a module adds a
scoped delta only on the rows routed to it (and, like every side-car, only where the edit's set is
selected). Scoped deltas never add up: a row sees one edit's change, so a thousand edits do not
interfere with each other, and rows routed to none are computed bit for bit as unedited.

An entry holds one or more *cells*: a single-fact editor (ROME) pushed a batch of facts makes one
cell per fact, each with its own delta and prompt; a batch editor (MEMIT) makes one cell whose
delta serves all its prompts. Each cell is its own scope.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import sets
from ..ops.hooks import get_module
from ..ops.scope import drop_router, scope_router
from .base import Entry, drop_hook, host_hooks, register_entry
from .delta import apply_factors, concat_factors

__all__ = ["ScopedDeltaEntry", "ScopedCar"]


class ScopedCar:
    """The scoped deltas on one module, keyed by scope, behind one forward hook."""

    def __init__(self, module: nn.Module, router: Any) -> None:
        self.module = module
        self.router = router
        self.parts: dict[str, dict[str, torch.Tensor]] = {}
        self.sets: dict[str, str | None] = {}
        self._factors: dict[str, tuple[Any, Any, Any]] = {}
        self._handle: Any = None
        self.enabled = True

    def add(self, scope: str, part: dict[str, torch.Tensor], edit_set: str | None) -> None:
        self.parts[scope], self.sets[scope] = part, edit_set
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook)

    def discard(self, scope: str) -> None:
        self.parts.pop(scope, None)
        self.sets.pop(scope, None)
        self._factors.pop(scope, None)
        if not self.parts and self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, _m: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not self.parts:
            return output
        rows = self.router.rows()
        hits = [s for s in dict.fromkeys(rows) if s is not None and s in self.parts]
        if not hits:
            return output  # no row routed to a scope on this module: the output is untouched
        x, dtype, out = args[0], output.dtype, output
        for scope in hits:
            g = self.router.row_mask(scope, output)
            s = sets.row_mask_for(self.sets[scope], output)
            if g is False or s is False:
                continue
            f = self._factors.get(scope)
            if f is None or any(t is not None and t.device != x.device for t in f):
                f = self._factors[scope] = concat_factors([self.parts[scope]], x.device)
            d = apply_factors(x, f) * g
            out = out + (d if s is True else d * s)
        return out.to(dtype)


def scoped_cars(host: Any, create: bool = False) -> dict[str, ScopedCar]:
    return host_hooks(host, "_ew_scoped", create)


@register_entry
class ScopedDeltaEntry(Entry):
    """Cells of (per-module delta parts, prompt embeddings), one scope each, and the routing rule."""

    kind = "scoped_delta"
    #: why export refuses it (editwrap.export)
    not_exportable = ("applies only to inputs routed to its edit by text similarity; a weight matrix would apply it "
                      "to every input")

    def __init__(self, cells: list[tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor]], threshold: float,
                 embedder: str = "minilm", subjects: list[list[str | None]] | None = None) -> None:
        if not cells:
            raise ValueError("a scoped edit needs at least one cell (a delta and its prompts)")
        #: per cell, per stored prompt: the subject a relation match requires (None: whole-prompt match)
        self.subjects = subjects if subjects is not None else [[None] * keys.shape[0] for _, keys in cells]
        self.cells = [({m: {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in p.items()}
                        for m, p in parts.items()}, keys.detach().to("cpu", torch.float32).contiguous())
                      for parts, keys in cells]
        self.threshold = float(threshold)
        self.embedder = embedder

    @staticmethod
    def _scope(key: str, i: int) -> str:
        return f"{key}#{i}"

    def attach(self, host: Any, key: str) -> None:
        router = scope_router(host, self.embedder, create=True)
        cars = scoped_cars(host, create=True)
        edit_set = host._ew_cache.get("edit_sets", {}).get(key)
        for i, (parts, keys) in enumerate(self.cells):
            scope = self._scope(key, i)
            router.add(scope, keys, self.threshold, self.subjects[i])
            for name, part in parts.items():
                car = cars.get(name)
                if car is None:
                    car = cars[name] = ScopedCar(get_module(host, name), router)
                car.add(scope, part, edit_set)

    def detach(self, host: Any, key: str) -> None:
        router = host.__dict__.get("_ew_scope_router")
        cars = scoped_cars(host)
        for i, (parts, _keys) in enumerate(self.cells):
            scope = self._scope(key, i)
            if router is not None:
                router.discard(scope)
            for name in parts:
                car = cars.get(name)
                if car is not None:
                    car.discard(scope)
                    if not car.parts:
                        drop_hook(host, "_ew_scoped", name)
        drop_router(host)

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, (parts, keys) in enumerate(self.cells):
            out[f"{i}/@keys"] = keys
            out.update({f"{i}/{m}::{k}": t for m, p in parts.items() for k, t in p.items()})
        return out

    def meta(self) -> dict[str, Any]:
        return {"cells": len(self.cells), "threshold": self.threshold, "embedder": self.embedder,
                "subjects": self.subjects,
                "modules": sorted({m for parts, _ in self.cells for m in parts})}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "ScopedDeltaEntry":
        cells: list[tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor]] = []
        for i in range(int(meta["cells"])):
            parts: dict[str, dict[str, torch.Tensor]] = {}
            for name, t in tensors.items():
                cell, _, rest = name.partition("/")
                if cell != str(i) or rest == "@keys":
                    continue
                mod, k = rest.rsplit("::", 1)
                parts.setdefault(mod, {})[k] = t
            cells.append((parts, tensors[f"{i}/@keys"]))
        return cls(cells, meta["threshold"], meta.get("embedder", "minilm"), meta.get("subjects"))

    def summary(self) -> str:
        mods = sorted({m for parts, _ in self.cells for m in parts})
        return f"scoped delta ({len(self.cells)} scope(s), threshold {self.threshold:g}) on {', '.join(mods)}"
