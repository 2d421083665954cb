"""WISE side memory (Wang et al., NeurIPS 2024) as stack entries.

At one FFN value matrix ``W`` (the MLP output projection) WISE keeps a *side memory*: copies of
``W`` that edits train, each as ``W + Δ``. Edits go into the current *knowledge shard* (one random
gradient mask per shard); every ``save_freq`` edits the shard is closed into the memory list, and
every ``merge_freq`` edits the newest shards are TIES-merged into one. A router picks, per
sequence, the main output or the side output of the memory whose activations differ most from the
main ones, if that distance beats the memory's threshold (``act_ratio`` × the smallest in-scope
distance seen while editing it): WISE-Retrieve's routing.

Here the side output is ``main_out + x Δᵀ`` (``main_out`` includes weight deltas below, so
WISE composes with them). Each entry stores its own ``Δ`` increment (and its shard's mask when it
opened one); the memory state after each entry is derived deterministically and kept, so pop
restores the previous state exactly. Shard closing and merging depend on order:
``removable_anywhere = False``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...ops.hooks import ForwardMask, get_module
from ...ops.merge import ties_merge
from ...entries.base import Entry, drop_hook, host_hooks, register_entry

__all__ = ["WiseEntry", "WiseMemory", "WiseState", "wise_memories", "act_distance"]


def act_distance(act: Any, main: torch.Tensor, side: torch.Tensor, infer: bool = False,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """EasyEdit's ``euc``: per-sequence mean (inference: max if > 100 tokens) of ‖act(main) − act(side)‖.

    ``mask`` (B, T): the real tokens; padding is left out of the mean and the max, so a sequence
    routes the same alone or in any batch (EasyEdit averages over the padded length).
    """
    d = torch.norm(act(main.float()) - act(side.float()), dim=-1)
    if mask is None:
        if infer and d.shape[1] > 100:
            return d.max(1).values
        return d.mean(1)
    m = mask.to(d.device, d.dtype)
    n = m.sum(1)
    mean = (d * m).sum(1) / n.clamp_min(1)
    if not infer:
        return mean
    peak = d.masked_fill(m == 0, float("-inf")).max(1).values
    return torch.where(n > 100, peak, mean)


@dataclass(frozen=True)
class WiseState:
    shards: tuple[tuple[torch.Tensor, float], ...] = ()   # closed memories: (Δ, min in-scope distance)
    cur: torch.Tensor | None = None                        # Δ of the open shard
    mask: torch.Tensor | None = None                       # its gradient mask
    cur_acts: tuple[float, ...] = ()
    total: int = 0
    act_ratio: float = 0.88

    def memories(self) -> list[tuple[torch.Tensor, float]]:
        out = list(self.shards)
        if self.cur is not None:
            out.append((self.cur, min(self.cur_acts)))
        return out


def _advance(s: WiseState, e: "WiseEntry") -> WiseState:
    cur = e.delta.clone() if s.cur is None else s.cur + e.delta
    mask = e.mask if e.mask is not None else s.mask
    acts = s.cur_acts + (e.act,)
    total = s.total + 1
    new = replace(s, cur=cur, mask=mask, cur_acts=acts, total=total, act_ratio=e.act_ratio)
    if len(acts) % e.save_freq == 0:
        new = replace(new, shards=new.shards + ((cur, min(acts)),), cur=None, mask=None, cur_acts=())
    if total % e.merge_freq == 0 and len(new.shards) > 1:
        k = min(len(new.shards), max(1, e.merge_freq // e.save_freq))
        group = new.shards[-k:]
        merged = ties_merge([d for d, _ in group], [1.0 / k] * k, e.density)
        new = replace(new, shards=new.shards[:-k] + ((merged, min(a for _, a in group)),))
    return new


def wise_memories(host: Any, create: bool = False) -> dict[str, "WiseMemory"]:
    return host_hooks(host, "_ew_wise", create)


class WiseMemory:
    """The side memory of one module: the state after each WISE entry, and the routing hook."""

    def __init__(self, module: nn.Module, hidden_act: str, host: nn.Module | None = None) -> None:
        from transformers.activations import ACT2FN

        self.module = module
        self.act = ACT2FN[hidden_act]
        self.states: list[tuple[str, WiseState]] = []
        self.enabled = True
        self._handle: Any = None
        self.padding = ForwardMask(host) if host is not None else None

    @property
    def state(self) -> WiseState:
        return self.states[-1][1] if self.states else WiseState()

    def add(self, key: str, e: "WiseEntry") -> None:
        if self.state.total != e.base_total:
            raise ValueError(f"WISE entry was computed on a side memory with {e.base_total} edits at {e.module} but "
                             f"the stack has {self.state.total}; push WISE edits in the order they were computed")
        self.states.append((key, _advance(self.state, e)))
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook)
            if self.padding is not None:
                self.padding.attach()

    def discard(self, key: str) -> None:
        self.states = [(k, s) for k, s in self.states if k != key]
        if not self.states and self._handle is not None:
            self._handle.remove()
            self._handle = None
            if self.padding is not None:
                self.padding.detach()

    def route(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """WISE-Retrieve: per sequence, the side output with the largest activation shift above its threshold."""
        st = self.state
        best, best_d = out, torch.zeros(out.shape[0], device=out.device)
        rows = self.padding.rows(x) if self.padding is not None else None
        for delta, min_act in st.memories():
            side = out + F.linear(x.to(delta.dtype), delta.to(x.device))  # float32 (delta's dtype)
            d = act_distance(self.act, out, side, infer=True, mask=rows)
            take = (d > best_d) & (d > min_act * st.act_ratio)
            if bool(take.any()):
                best = torch.where(take.view(-1, *[1] * (out.dim() - 1)), side, best)
                best_d = torch.where(take, d, best_d)
        return best.to(out.dtype)

    def _hook(self, _m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not self.states:
            return out
        return self.route(out, args[0])


@register_entry
class WiseEntry(Entry):
    """One WISE edit: its increment of the open shard's Δ, its in-scope distance, and shard settings."""

    kind = "wise"
    plane = "activations"
    removable_anywhere = False

    def __init__(self, module: str, base_total: int, delta: torch.Tensor, mask: torch.Tensor | None, act: float,
                 hidden_act: str, act_ratio: float, save_freq: int, merge_freq: int, density: float) -> None:
        self.module, self.base_total = module, int(base_total)
        self.delta = delta.detach().to("cpu", torch.float32).contiguous()
        self.mask = mask.detach().to("cpu", torch.bool).contiguous() if mask is not None else None
        self.act, self.hidden_act, self.act_ratio = float(act), hidden_act, float(act_ratio)
        self.save_freq, self.merge_freq, self.density = int(save_freq), int(merge_freq), float(density)

    def attach(self, host: Any, key: str) -> None:
        mems = wise_memories(host, create=True)
        mem = mems.get(self.module)
        if mem is None:
            mem = mems[self.module] = WiseMemory(get_module(host, self.module), self.hidden_act, host)
        mem.add(key, self)

    def detach(self, host: Any, key: str) -> None:
        mems = wise_memories(host)
        mem = mems.get(self.module)
        if mem is None:
            return
        mem.discard(key)
        if not mem.states:
            drop_hook(host, "_ew_wise", self.module)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"delta": self.delta, **({"mask": self.mask} if self.mask is not None else {})}

    def meta(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("module", "base_total", "act", "hidden_act", "act_ratio", "save_freq",
                                               "merge_freq", "density")}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "WiseEntry":
        return cls(meta["module"], meta["base_total"], tensors["delta"], tensors.get("mask"), meta["act"],
                   meta["hidden_act"], meta["act_ratio"], meta["save_freq"], meta["merge_freq"], meta["density"])

    def summary(self) -> str:
        return f"wise side memory at {self.module} (edit {self.base_total + 1}, in-scope act {self.act:.2f})"
