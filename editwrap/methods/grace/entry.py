"""Activation entries: GRACE codebooks (this file); WISE side memories live in ``methods/wise/entry.py``.

GRACE (Hartvigsen et al., 2023) keeps, at one layer, a codebook of (key, value, radius) rows. A
key is the input of the wrapped module at one token; when the input at a token lies within a
row's radius (Euclidean) of its key, the module's output at that token is *replaced* by the
row's value. EasyEdit queries only the last token of the current forward (``replace_last``):
here every token is tested, which is the same on the edited prompt (its last prompt token is
the key) and works unchanged for teacher-forced scoring and KV-cached generation.

All GRACE entries on one module share one :class:`Codebook` behind one forward hook. An entry
stores the rows it added plus the rows of the codebook below it that its edit changed (the
radius split on conflicting labels and the ``coverage`` expansion of the paper), so its effect
depends on order: ``removable_anywhere = False`` and attaching checks the codebook has the size
it was computed on. Detach restores the changed rows bit for bit.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...ops.hooks import get_module
from ...entries.base import Entry, drop_hook, host_hooks, register_entry

__all__ = ["Codebook", "GraceEntry", "codebooks"]


def codebooks(host: Any, create: bool = False) -> dict[str, "Codebook"]:
    return host_hooks(host, "_ew_codebooks", create)


class Codebook:
    """The GRACE rows of one module in push order, applied by one forward hook."""

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module
        self.keys = torch.zeros(0, 0)
        self.values = torch.zeros(0, 0)
        self.eps = torch.zeros(0)
        self.labels: list[str] = []
        self.undo: dict[str, tuple[int, dict[int, tuple[torch.Tensor, torch.Tensor, float, str]]]] = {}
        self.enabled = True
        self._handle: Any = None

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def copy(self) -> "Codebook":
        c = Codebook(None)
        c.keys, c.values, c.eps, c.labels = self.keys.clone(), self.values.clone(), self.eps.clone(), list(self.labels)
        return c

    # -- lookup ----------------------------------------------------------------------------
    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance to and index of the nearest key for each row of ``x`` (…, d_in)."""
        k = self.keys.to(x.device)
        d = torch.cdist(x.reshape(-1, x.shape[-1]).float(), k.float(), compute_mode="donot_use_mm_for_euclid_dist")
        dist, idx = d.min(1)
        return dist.view(x.shape[:-1]), idx.view(x.shape[:-1])

    def apply(self, out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        if not len(self):
            return out
        dist, idx = self.nearest(inp)
        hit = dist <= self.eps.to(out.device)[idx]
        if not bool(hit.any()):
            return out
        vals = self.values.to(out.device, out.dtype)[idx]
        return torch.where(hit.unsqueeze(-1), vals, out)

    def _hook(self, _m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return self.apply(out, args[0]) if self.enabled else out

    # -- stack bookkeeping -----------------------------------------------------------------
    def add(self, key: str, entry: "GraceEntry") -> None:
        n = len(self)
        if n != entry.base_rows:
            raise ValueError(
                f"GRACE entry was computed on a codebook of {entry.base_rows} rows at {entry.module} but the stack "
                f"has {n}; push GRACE edits in the order they were computed")
        saved = {}
        if n == 0:
            self.keys = entry.keys.clone()
            self.values = entry.values.clone()
            self.eps = entry.eps.clone()
        else:
            for j, i in enumerate(entry.upd_idx.tolist()):
                saved[i] = (self.keys[i].clone(), self.values[i].clone(), float(self.eps[i]), self.labels[i])
                self.keys[i], self.values[i], self.eps[i] = entry.upd_keys[j], entry.upd_values[j], entry.upd_eps[j]
                self.labels[i] = entry.upd_labels[j]
            self.keys = torch.cat([self.keys, entry.keys])
            self.values = torch.cat([self.values, entry.values])
            self.eps = torch.cat([self.eps, entry.eps])
        self.labels += list(entry.labels)
        self.undo[key] = (n, saved)
        if self._handle is None and self.module is not None:
            self._handle = self.module.register_forward_hook(self._hook)

    def discard(self, key: str) -> None:
        if key not in self.undo:
            return
        n, saved = self.undo.pop(key)
        self.keys, self.values, self.eps = self.keys[:n].clone(), self.values[:n].clone(), self.eps[:n].clone()
        self.labels = self.labels[:n]
        for i, (k, v, e, lab) in saved.items():
            self.keys[i], self.values[i], self.eps[i], self.labels[i] = k, v, e, lab
        if not self.undo and self._handle is not None:
            self._handle.remove()
            self._handle = None


@register_entry
class GraceEntry(Entry):
    """Rows added to (and rows changed in) the GRACE codebook of one module."""

    kind = "grace"
    plane = "activations"
    removable_anywhere = False

    def __init__(self, module: str, base_rows: int, keys: torch.Tensor, values: torch.Tensor, eps: torch.Tensor,
                 labels: list[str], upd_idx: torch.Tensor | None = None, upd_keys: torch.Tensor | None = None,
                 upd_values: torch.Tensor | None = None, upd_eps: torch.Tensor | None = None,
                 upd_labels: list[str] | None = None) -> None:
        f = lambda t: t.detach().to("cpu", torch.float32).contiguous()  # noqa: E731
        self.module, self.base_rows = module, int(base_rows)
        self.keys, self.values, self.eps, self.labels = f(keys), f(values), f(eps), list(labels)
        self.upd_idx = (upd_idx if upd_idx is not None else torch.zeros(0)).to("cpu", torch.long)
        self.upd_keys = f(upd_keys) if upd_keys is not None else torch.zeros(0, self.keys.shape[1])
        self.upd_values = f(upd_values) if upd_values is not None else torch.zeros(0, self.values.shape[1])
        self.upd_eps = f(upd_eps) if upd_eps is not None else torch.zeros(0)
        self.upd_labels = list(upd_labels or [])

    def attach(self, host: Any, key: str) -> None:
        books = codebooks(host, create=True)
        cb = books.get(self.module)
        if cb is None:
            cb = books[self.module] = Codebook(get_module(host, self.module))
        cb.add(key, self)

    def detach(self, host: Any, key: str) -> None:
        books = codebooks(host)
        cb = books.get(self.module)
        if cb is None:
            return
        cb.discard(key)
        if not cb.undo:
            drop_hook(host, "_ew_codebooks", self.module)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "values": self.values, "eps": self.eps, "upd_idx": self.upd_idx,
                "upd_keys": self.upd_keys, "upd_values": self.upd_values, "upd_eps": self.upd_eps}

    def meta(self) -> dict[str, Any]:
        return {"module": self.module, "base_rows": self.base_rows, "labels": self.labels,
                "upd_labels": self.upd_labels}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "GraceEntry":
        return cls(meta["module"], meta["base_rows"], tensors["keys"], tensors["values"], tensors["eps"],
                   meta["labels"], tensors["upd_idx"], tensors["upd_keys"], tensors["upd_values"], tensors["upd_eps"],
                   meta["upd_labels"])

    def summary(self) -> str:
        return (f"grace codebook at {self.module}: +{self.keys.shape[0]} rows"
                + (f", {len(self.upd_labels)} changed" if self.upd_labels else ""))
