"""What every stack entry kind provides: attach/detach on a model, and data for saving.

An entry is *data* (tensors + JSON). ``attach`` makes the model behave as edited without
writing any existing weight; ``detach`` undoes exactly that. Entry kinds register themselves by
name so a saved stack can be rebuilt without pickle.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

__all__ = ["Entry", "ENTRY_KINDS", "register_entry", "entry_from_saved", "host_hooks", "drop_hook"]

ENTRY_KINDS: dict[str, type["Entry"]] = {}


def register_entry(cls: type["Entry"]) -> type["Entry"]:
    ENTRY_KINDS[cls.kind] = cls
    return cls


class Entry:
    kind: ClassVar[str] = ""
    #: Whether the entry can be removed from the middle of the stack (order-independent effect).
    removable_anywhere: ClassVar[bool] = True
    #: Whether the entry acts on raw forward() (weights/activations) or only on text helpers.
    plane: ClassVar[str] = "weights"

    def attach(self, host: Any, key: str) -> None:  # host = EditableModel
        raise NotImplementedError

    def detach(self, host: Any, key: str) -> None:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors to save (names are local to this entry)."""
        return {}

    def meta(self) -> dict[str, Any]:
        """JSON-serialisable description needed to rebuild the entry."""
        return {}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "Entry":
        raise NotImplementedError

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def check_finite(self) -> None:
        for name, t in self.tensors().items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise FloatingPointError(f"entry tensor {name!r} has non-finite values; the edit was not applied")

    def summary(self) -> str:
        return self.kind


def entry_from_saved(kind: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Entry:
    if kind not in ENTRY_KINDS:
        raise ValueError(f"saved stack has an entry of kind {kind!r}, unknown to this editwrap; known: "
                         f"{sorted(ENTRY_KINDS)}")
    return ENTRY_KINDS[kind].from_saved(meta, tensors)


def host_hooks(host: Any, attr: str, create: bool = False) -> dict[str, Any]:
    """Per-module hook owners of one entry family, kept in the host's ``__dict__`` under ``attr``
    (absent while empty, so a model with nothing pushed looks exactly as before)."""
    d = host.__dict__
    if attr not in d and create:
        d[attr] = {}
    return d.get(attr, {})


def drop_hook(host: Any, attr: str, module: str) -> None:
    """Forget the hook owner of ``module``; the attribute goes once the last one has."""
    owners = host_hooks(host, attr)
    owners.pop(module, None)
    if not owners:
        host.__dict__.pop(attr, None)
