"""MEMOIR residual memory (Wang et al., 2025) as stack entries.

One residual memory ``W_m`` (the shape of the MLP output projection ``W``, zero before any edit)
per edited module: the module's output becomes ``W x + W_m (M ⊙ x)`` for a sequence that
retrieves an edit, and stays ``W x`` otherwise. ``M`` is a *TopHash* mask: the ``k`` features of
largest magnitude of the sequence's mean input (padding skipped), moved by a fixed seeded
permutation so that edits with similar dominant features still write different columns.

Retrieval: the mask of the current sequence is compared with the stored mask of every edit
(overlap = shared features / k); the best edit at or above its threshold gives the mask the
memory is applied with. No edit above threshold: the output is returned untouched (bit for bit).

Each entry holds its mask's column indices and what it wrote there (a ``d_out × k`` delta). The
memory is the sum of the entries' deltas in push order; ``discard`` rebuilds that sum from the
remaining entries in the same order, so pop and ``remove`` give exactly the memory the remaining
entries would give pushed alone. A sequence is routed on its prompt, as the edit's mask was taken
on the edit's prompt: the mean over the real tokens of the forward that starts it (inside
``route_as``, over the named prompt's tokens only), and KV-cached generation steps keep that
decision.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ...entries.base import Entry, drop_hook, host_hooks, register_entry
from ...ops.forward import token_ids
from ...ops.hooks import ForwardMask, get_module
from ...ops.scope import routed_texts

__all__ = ["MemoirEntry", "MemoirMemory", "memoir_memories", "tophash", "mask_rows", "mean_input", "hash_permutation",
           "memory_off"]


def hash_permutation(d: int, seed: int) -> torch.Tensor:
    """The fixed permutation of TopHash: feature ``i`` of the top-k goes to column ``perm[i]``."""
    return torch.randperm(d, generator=torch.Generator().manual_seed(seed))


def mean_input(x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(B, d) mean over the real tokens of (B, T, d) inputs (``rows``: (B, T) weights of real tokens)."""
    x = x.float()
    if rows is None:
        return x.mean(1)
    r = rows.to(x.device, x.dtype)
    return (x * r.unsqueeze(-1)).sum(1) / r.sum(1, keepdim=True).clamp_min(1)


def tophash(mean: torch.Tensor, k: int, perm: torch.Tensor) -> torch.Tensor:
    """(B, k) sorted memory columns of each row's mask: the top-k |features|, permuted."""
    top = mean.abs().topk(k, dim=-1).indices
    return perm.to(top.device)[top].sort(-1).values


def mask_rows(mean: torch.Tensor, k: int, perm: torch.Tensor) -> torch.Tensor:
    """(B, d) 0/1 masks of each row's TopHash columns (``d`` = ``perm``'s length)."""
    out = torch.zeros(mean.shape[0], perm.numel())
    if mean.shape[0]:
        out.scatter_(1, tophash(mean.cpu(), k, perm), 1.0)
    return out


class _ForwardState(ForwardMask):
    """The forward's attention mask, and whether it continues a KV cache (a generation step after the first)."""

    cached = False

    def _pre(self, m: nn.Module, args: tuple, kwargs: dict) -> None:
        super()._pre(m, args, kwargs)
        cache = next((kwargs[k] for k in ("past_key_values", "cache") if kwargs.get(k) is not None), None)
        length = getattr(cache, "get_seq_length", None)
        self.cached = bool(length is not None and length() > 0)

    def _post(self, m: nn.Module, args: tuple, out: object) -> None:
        super()._post(m, args, out)
        self.cached = False


def memoir_memories(host: Any, create: bool = False) -> dict[str, "MemoirMemory"]:
    return host_hooks(host, "_ew_memoir", create)


@contextlib.contextmanager
def memory_off(host: Any, module: str) -> Iterator["MemoirMemory | None"]:
    """The memory at ``module`` (or None), switched off inside: the module's output is the base
    model's, as an edit is computed and as a prompt's mask is read."""
    live = memoir_memories(host).get(module)
    was = live.enabled if live is not None else None
    if live is not None:
        live.enabled = False
    try:
        yield live
    finally:
        if live is not None:
            live.enabled = was


class MemoirMemory:
    """The residual memory of one module: the entries in push order, their summed deltas, the hook."""

    def __init__(self, module: nn.Module | None, host: nn.Module | None = None) -> None:
        self.module = module
        self.entries: list[tuple[str, "MemoirEntry"]] = []
        self.weight = torch.zeros(0, 0)
        self.masks = torch.zeros(0, 0)
        self.thresholds = torch.zeros(0)
        self.enabled = True
        self._handle: Any = None
        self._decision: tuple[torch.Tensor, torch.Tensor] | None = None
        self.padding = _ForwardState(host) if host is not None else None

    @property
    def perm(self) -> torch.Tensor | None:
        return self.entries[0][1].perm if self.entries else None

    @property
    def k(self) -> int:
        return int(self.entries[0][1].idx.numel()) if self.entries else 0

    def _rebuild(self) -> None:
        """Memory, mask matrix and thresholds from the entries, summed in push order (as ``_append`` does)."""
        entries = self.entries
        self.entries, self.thresholds = [], torch.zeros(0)
        self.weight, self.masks = torch.zeros(0, 0), torch.zeros(0, 0)
        for key, e in entries:
            self._append(key, e)

    def _append(self, key: str, e: "MemoirEntry") -> None:
        if not self.entries:
            self.weight = torch.zeros(e.delta.shape[0], e.perm.numel())
            self.masks = torch.zeros(0, e.perm.numel())
        self.weight.index_add_(1, e.idx, e.delta)
        row = torch.zeros(1, e.perm.numel())
        row[0, e.idx] = 1.0
        self.masks = torch.cat([self.masks, row])
        self.thresholds = torch.cat([self.thresholds, torch.tensor([e.threshold])])
        self.entries.append((key, e))

    def add(self, key: str, e: "MemoirEntry") -> None:
        if self.entries:
            first = self.entries[0][1]
            if not torch.equal(first.perm, e.perm) or first.idx.numel() != e.idx.numel() \
                    or first.delta.shape[0] != e.delta.shape[0]:
                raise ValueError(f"MEMOIR entry at {e.module} uses another mask size or hash (mask_ratio, seed) than "
                                 f"the entries already on that memory; edit with the same mask_ratio and seed")
        self._append(key, e)
        if self._handle is None and self.module is not None:
            self._handle = self.module.register_forward_hook(self._hook)
            if self.padding is not None:
                self.padding.attach()

    def discard(self, key: str) -> None:
        self.entries = [(k, e) for k, e in self.entries if k != key]
        self._rebuild()
        if not self.entries and self._handle is not None:
            self._handle.remove()
            self._handle = None
            if self.padding is not None:
                self.padding.detach()

    def retrieve(self, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row of ``mean`` (B, d): the best edit's index, its overlap, and whether it passes its threshold."""
        overlap = mask_rows(mean, self.k, self.perm) @ self.masks.T / self.k
        ok = overlap >= self.thresholds
        best = overlap.masked_fill(~ok, -1.0).argmax(1)
        return best, overlap.gather(1, best[:, None]).squeeze(1), ok.any(1)

    def _prompt_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) weights of the tokens a row is routed on: its real tokens, and inside
        :func:`~editwrap.ops.scope.route_as` (teacher-forced scoring, ``loglikelihood``) only the
        first ones, as many as the prompt it names has: the edit's mask was taken on its prompt."""
        rows = self.padding.rows(x) if self.padding is not None else torch.ones(x.shape[:2], device=x.device)
        rows = rows.to(x.device, torch.float32)
        texts = routed_texts()
        tok = getattr(self.padding.host, "tokenizer", None) if self.padding is not None else None
        if texts is None or len(texts) != x.shape[0] or tok is None:
            return rows
        n = torch.tensor([len(token_ids(tok, t)) for t in texts], device=x.device, dtype=torch.float32)
        return rows * (rows.cumsum(1) <= n[:, None]).float()

    def _decide(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the edit retrieved and whether any passes its threshold. The decision is taken
        on the prompt (the forward that starts a sequence) and kept by the KV-cached steps after it,
        so a generated answer sees the edit from its first token to its last. A cached forward with
        no decision for its batch (another batch size) is routed on its own tokens."""
        prev = self._decision if self.padding is not None and self.padding.cached else None
        if prev is not None and prev[0].shape[0] == x.shape[0]:
            return prev
        best, _, hit = self.retrieve(mean_input(x, self._prompt_rows(x)))
        self._decision = (best, hit)
        return best, hit

    def apply(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.entries:
            return out
        best, hit = self._decide(x)
        if not bool(hit.any()):
            return out
        sel = (self.masks[best] * hit[:, None].float()).to(x.device)
        add = F.linear(x.float() * sel[:, None, :], self.weight.to(x.device)).to(out.dtype)
        return torch.where(hit.to(out.device).view(-1, *[1] * (out.dim() - 1)), out + add, out)

    def _hook(self, _m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return self.apply(out, args[0]) if self.enabled else out


@register_entry
class MemoirEntry(Entry):
    """One MEMOIR edit: its mask's columns, what it wrote there, the hash and its retrieval threshold."""

    kind = "memoir"
    plane = "activations"

    def __init__(self, module: str, idx: torch.Tensor, delta: torch.Tensor, perm: torch.Tensor,
                 threshold: float) -> None:
        self.module = module
        self.idx = idx.detach().to("cpu", torch.long).contiguous()
        self.delta = delta.detach().to("cpu", torch.float32).contiguous()
        self.perm = perm.detach().to("cpu", torch.long).contiguous()
        self.threshold = float(threshold)
        if self.delta.shape[1] != self.idx.numel():
            raise ValueError(f"MEMOIR entry: delta has {self.delta.shape[1]} columns for {self.idx.numel()} mask "
                             f"features")

    def attach(self, host: Any, key: str) -> None:
        mems = memoir_memories(host, create=True)
        mem = mems.get(self.module)
        if mem is None:
            mem = mems[self.module] = MemoirMemory(get_module(host, self.module), host)
        mem.add(key, self)

    def detach(self, host: Any, key: str) -> None:
        mem = memoir_memories(host).get(self.module)
        if mem is None:
            return
        mem.discard(key)
        if not mem.entries:
            drop_hook(host, "_ew_memoir", self.module)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"idx": self.idx, "delta": self.delta, "perm": self.perm}

    def meta(self) -> dict[str, Any]:
        return {"module": self.module, "threshold": self.threshold}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "MemoirEntry":
        return cls(meta["module"], tensors["idx"], tensors["delta"], tensors["perm"], meta["threshold"])

    def summary(self) -> str:
        return f"memoir residual memory at {self.module}: {self.idx.numel()} of {self.perm.numel()} columns"
