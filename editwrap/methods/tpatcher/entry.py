"""T-Patcher patches (Huang et al., ICLR 2023) as stack entries.

A patch is one extra FFN neuron at the last layer: key ``k``, bias ``b``, value ``v``; the MLP
output becomes ``mlp(x) + relu(x·k + b) v`` at every token, so a patch that is not activated
(pre-activation ≤ 0) changes nothing. All patches on one MLP are concatenated behind one forward
hook (``relu(x K + b) V``). Patches are additive and independent of order:
``removable_anywhere = True``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...ops.hooks import get_module
from ...entries.base import Entry, drop_hook, host_hooks, register_entry

__all__ = ["PatchBank", "TPatcherEntry", "patch_out"]

ATTR = "_ew_patches"


def patch_out(x: torch.Tensor, k: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``relu(x K + b) V`` with K (d_in×n), b (n), V (n×d_out)."""
    return torch.relu(x.to(k.dtype) @ k + b) @ v


class PatchBank:
    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.parts: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._cat: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._handle: Any = None

    def add(self, key: str, k: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> None:
        self.parts[key] = (k, b, v)
        self._cat = None
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook)

    def discard(self, key: str) -> None:
        self.parts.pop(key, None)
        self._cat = None
        if not self.parts and self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, _m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if self._cat is None or self._cat[0].device != out.device:
            ks, bs, vs = zip(*self.parts.values())
            self._cat = (torch.cat(ks, 1).to(out.device), torch.cat(bs).to(out.device), torch.cat(vs).to(out.device))
        return (out + patch_out(args[0], *self._cat)).to(out.dtype)


@register_entry
class TPatcherEntry(Entry):
    """Patch neurons (one per edited fact) on one MLP module."""

    kind = "tpatcher"
    plane = "activations"
    removable_anywhere = True

    def __init__(self, module: str, key: torch.Tensor, bias: torch.Tensor, value: torch.Tensor) -> None:
        f = lambda t: t.detach().to("cpu", torch.float32).contiguous()  # noqa: E731
        self.module, self.key, self.bias, self.value = module, f(key), f(bias), f(value)

    def attach(self, host: Any, key: str) -> None:
        banks = host_hooks(host, ATTR, create=True)
        bank = banks.get(self.module)
        if bank is None:
            bank = banks[self.module] = PatchBank(get_module(host, self.module))
        bank.add(key, self.key, self.bias, self.value)

    def detach(self, host: Any, key: str) -> None:
        bank = host_hooks(host, ATTR).get(self.module)
        if bank is not None:
            bank.discard(key)
            if not bank.parts:
                drop_hook(host, ATTR, self.module)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"key": self.key, "bias": self.bias, "value": self.value}

    def meta(self) -> dict[str, Any]:
        return {"module": self.module}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "TPatcherEntry":
        return cls(meta["module"], tensors["key"], tensors["bias"], tensors["value"])

    def summary(self) -> str:
        return f"t-patcher: {self.key.shape[1]} patch neuron(s) on {self.module}"
