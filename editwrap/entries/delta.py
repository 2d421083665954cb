"""Weight deltas applied as side-cars: ``y = base(x) + Σ_k x V_k U_kᵀ (+ x D_kᵀ)``.

The base weight is never written, so popping an entry is bit-exact and O(1), and the same code
works over 8-bit bitsandbytes layers. One :class:`Sidecar` per edited module owns a single
forward hook; the factors of all entries on that module are concatenated lazily so that many
rank-one edits cost one pair of matmuls.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import sets
from ..ops.hooks import get_module
from .base import Entry, register_entry

__all__ = ["Sidecar", "DeltaEntry", "is_conv1d", "apply_factors", "concat_factors"]


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D stores its weight as (in, out)."""
    return type(module).__name__ == "Conv1D"


class Sidecar:
    """All delta payloads on one module, in push order, behind one forward hook."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.parts: dict[str, dict[str, torch.Tensor]] = {}
        self._cache: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None] | None = None
        self.sets: dict[str, str | None] = {}  # part key -> its edit set (None: applies always)
        self._set_cache: dict[str | None, tuple[Any, Any, Any]] = {}
        self._handle: Any = None
        self.enabled = True

    # -- bookkeeping -------------------------------------------------------------------------
    def add(self, key: str, part: dict[str, torch.Tensor], edit_set: str | None = None) -> None:
        self.parts[key] = part
        self.sets[key] = edit_set
        self._cache = None
        self._set_cache = {}
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook)

    def discard(self, key: str) -> None:
        self.parts.pop(key, None)
        self.sets.pop(key, None)
        self._cache = None
        self._set_cache = {}
        if not self.parts and self._handle is not None:
            self._handle.remove()  # an empty side-car costs nothing and changes nothing
            self._handle = None

    def __len__(self) -> int:
        return len(self.parts)

    def _factors(self, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        if self._cache is None or (self._cache[0] is not None and self._cache[0].device != device) or (
            self._cache[2] is not None and self._cache[2].device != device
        ):
            self._cache = concat_factors(list(self.parts.values()), device)
        return self._cache

    def _factors_of_set(self, name: str | None, device: torch.device) -> tuple[Any, Any, Any]:
        """The concatenated factors of the parts in one edit set (cached until the parts change)."""
        got = self._set_cache.get(name)
        if got is None or any(t is not None and t.device != device for t in got):
            parts = [self.parts[k] for k, s in self.sets.items() if s == name]
            got = self._set_cache[name] = concat_factors(parts, device)
        return got

    def delta_out(self, x: torch.Tensor, factors: tuple[Any, Any, Any] | None = None) -> torch.Tensor:
        return apply_factors(x, factors if factors is not None else self._factors(x.device))

    def _hook(self, _m: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not self.parts:
            return output
        # the float32 delta is added to the output upcast, then rounded once to the model's dtype
        # (a half-precision model: one rounding instead of two; float32: the same sum as before)
        if not sets.selecting() or all(s is None for s in self.sets.values()):
            return (output + self.delta_out(args[0])).to(output.dtype)
        dtype = output.dtype
        for name in dict.fromkeys(self.sets.values()):  # edit sets gated per call or per batch row
            g = sets.row_mask_for(name, output)
            if g is False:
                continue
            d = self.delta_out(args[0], self._factors_of_set(name, args[0].device))
            output = output + (d if g is True else d * g)
        return output.to(dtype)

    def weight_delta(self) -> torch.Tensor:
        """The summed delta as an (out, in) matrix (merge, norm reads), on the device of the factors.

        It reads the forward's cached factors wherever they are: asking for another device would
        replace them, and the next forward would concatenate (and fold) them again.
        """
        first = next((t for part in self.parts.values() for t in part.values()), torch.empty(0))
        U, V, D = self._cache if self._cache is not None else self._factors(first.device)
        total = None
        if U is not None:
            total = U @ V.T
        if D is not None:
            total = D if total is None else total + D
        assert total is not None
        return total


def apply_factors(x: torch.Tensor, factors: tuple[Any, Any, Any]) -> torch.Tensor:
    """``x V Uᵀ + x Dᵀ`` in the factors' dtype (float32): what a side-car adds to a module's output."""
    U, V, D = factors
    ref = U if U is not None else D
    xf = x.to(ref.dtype)
    out = torch.zeros((), dtype=ref.dtype, device=x.device)
    if U is not None:
        out = out + (xf @ V) @ U.T
    if D is not None:
        out = out + xf @ D.T
    return out


def concat_factors(parts: list[dict[str, torch.Tensor]], device: torch.device) -> tuple[Any, Any, Any]:
    """``(U, V, D)`` of several parts: low-rank factors side by side, dense deltas summed.

    Once the summed rank ``k`` makes the factors dearer than one dense matrix
    (``k·(in + out) > 2·in·out`` multiply-adds per token: hundreds of stacked rank-one or adapter
    edits), they are folded into ``D``; the result is the same to float rounding and the stored
    parts are untouched, so pop stays bit-exact.
    """
    us = [p["U"] for p in parts if "U" in p]
    vs = [p["V"] for p in parts if "V" in p]
    ds = [p["D"] for p in parts if "D" in p]
    U = torch.cat(us, dim=1).to(device) if us else None
    V = torch.cat(vs, dim=1).to(device) if vs else None
    D = torch.stack(ds).sum(0).to(device) if ds else None
    if U is not None and U.shape[1] * (U.shape[0] + V.shape[0]) > 2 * U.shape[0] * V.shape[0]:
        dense = U @ V.T
        U, V, D = None, None, dense if D is None else D + dense.to(D.dtype)
    return U, V, D


@register_entry
class DeltaEntry(Entry):
    """Low-rank (``U`` out×r, ``V`` in×r) or dense (``D`` out×in) deltas on named modules.

    ``aux``: tensors the method keeps with the entry without applying them (e.g. each fact's
    target value ``z`` for a later joint re-solve, AlphaEdit's post-edit keys); saved and loaded
    with the stack under ``@name``.
    """

    kind = "delta"

    def __init__(self, parts: dict[str, dict[str, torch.Tensor]], aux: dict[str, torch.Tensor] | None = None) -> None:
        self.parts = {m: {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in p.items()}
                      for m, p in parts.items()}
        self.aux = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in (aux or {}).items()}

    def attach(self, host: Any, key: str) -> None:
        for name, part in self.parts.items():
            car = host._sidecars.get(name)
            if car is None:
                car = host._sidecars[name] = Sidecar(get_module(host, name))
            car.add(key, part, host._ew_cache.get("edit_sets", {}).get(key))

    def detach(self, host: Any, key: str) -> None:
        for name in self.parts:
            car = host._sidecars.get(name)
            if car is not None:
                car.discard(key)
                if not len(car):
                    del host._sidecars[name]

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"{m}::{k}": t for m, p in self.parts.items() for k, t in p.items()}
        out.update({f"@{k}": t for k, t in self.aux.items()})
        return out

    def meta(self) -> dict[str, Any]:
        return {"modules": sorted(self.parts)}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "DeltaEntry":
        parts: dict[str, dict[str, torch.Tensor]] = {}
        aux: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            if name.startswith("@"):
                aux[name[1:]] = t
                continue
            mod, k = name.rsplit("::", 1)
            parts.setdefault(mod, {})[k] = t
        return cls(parts, aux)

    def summary(self) -> str:
        ranks = []
        for m, p in self.parts.items():
            r = f"rank {p['U'].shape[1]}" if "U" in p else "dense"
            ranks.append(f"{m} ({r})")
        return "delta on " + ", ".join(ranks)
