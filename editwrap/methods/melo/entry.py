"""MELO dynamic LoRA blocks (Yu et al., AAAI 2024) as stack entries, routed by a key database.

One entry = one edit: its LoRA block (``A`` r×d_in, ``B`` d_out×r per target module, scale
``s``) and its keys (one per fact, with a radius each). All MELO entries routed at one module
share one :class:`MeloRouter`: a forward hook there compares every token's *query* (the router
input itself, or its running mean over the sequence so far) with every stored key; a token
*hits* a key when within its radius, and the hit key's block becomes active from that token on
(the most recent hit wins, the nearest key among simultaneous hits). LoRA hooks on the target
modules (all after the router) add ``s · B A x`` of the active block only; tokens before any hit
run the base model unchanged, so an unrelated prompt gives bit-identical logits.

Routing is causal, so teacher-forced scoring and generation agree; for KV-cached generation the
router carries each row's active block (and running sum) from the previous forward on the same
cache object. Conflicts (a new key inside an older key's radius): the nearest key wins at query
time (EasyEdit instead halves both radii); this never changes older entries, so entries are
independent and removable from anywhere.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from ...ops.hooks import forward_root, get_module, padding_rows
from ...entries.base import Entry, drop_hook, host_hooks, register_entry

__all__ = ["MeloEntry", "MeloRouter", "melo_routers", "lora_out"]

ATTR = "_ew_melo"


def melo_routers(host: Any, create: bool = False) -> dict[str, "MeloRouter"]:
    return host_hooks(host, ATTR, create)


def lora_out(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    return ((x.to(a.dtype) @ a.T) @ b.T) * scale


def _cache_len(pkv: Any) -> int:
    try:
        return int(pkv.get_seq_length()) if hasattr(pkv, "get_seq_length") else int(pkv[0][0].shape[-2])
    except Exception:  # pragma: no cover - unknown cache types count as fresh
        return 0


class MeloRouter:
    """The key database of the MELO entries routed at one module, and their hooks."""

    def __init__(self, host: nn.Module, module: str, key_type: str) -> None:
        self.host, self.module, self.key_type = host, module, key_type
        self.entries: dict[str, MeloEntry] = {}
        self.enabled = True
        self.active: torch.Tensor | None = None   # (B, T) block index per token (-1: none), per forward
        self._mask: torch.Tensor | None = None
        self._cache: Any = None                   # (weakref to the KV cache, continuing?)
        self._carry: tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._db: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._handles: list[Any] = []
        self._lora: dict[str, Any] = {}

    # -- bookkeeping -------------------------------------------------------------------------
    def add(self, key: str, entry: "MeloEntry") -> None:
        if entry.key_type != self.key_type:
            raise ValueError(f"MELO entries routed at {self.module} use key_type {self.key_type!r}; this one uses "
                             f"{entry.key_type!r}; use one key_type per router layer")
        mods = {m: get_module(self.host, m) for m in entry.parts}  # fail before changing anything
        self.entries[key] = entry
        self._db, self._carry = None, None
        if not self._handles:
            root = forward_root(self.host)  # the backbone: the host stays hook-free (ops.values.logits_at)
            self._handles = [root.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
                             root.register_forward_hook(self._post_hook),
                             get_module(self.host, self.module).register_forward_hook(self._route_hook)]
        for name, mod in mods.items():
            if name not in self._lora:
                self._lora[name] = mod.register_forward_hook(self._lora_hook(name))

    def discard(self, key: str) -> None:
        if self.entries.pop(key, None) is None:
            return
        self._db, self._carry = None, None
        used = {m for e in self.entries.values() for m in e.parts}
        for name in [n for n in self._lora if n not in used]:
            self._lora.pop(name).remove()
        if not self.entries:
            self.close()

    def close(self) -> None:
        for h in [*self._handles, *self._lora.values()]:
            h.remove()
        self._handles, self._lora, self.active, self._carry, self._db = [], {}, None, None, None

    def _table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys (K, d), radii (K,), owning block (K,) of every entry, concatenated once."""
        if self._db is None or self._db[0].device != device:
            es = list(self.entries.values())
            keys = torch.cat([e.keys for e in es]).to(device, torch.float32)
            radii = torch.cat([e.radii for e in es]).to(device, torch.float32)
            owner = torch.cat([torch.full((e.keys.shape[0],), i, dtype=torch.long) for i, e in enumerate(es)])
            self._db = (keys, radii, owner.to(device))
        return self._db

    # -- routing ---------------------------------------------------------------------------
    def _pre_hook(self, _m: nn.Module, args: tuple, kwargs: dict) -> None:
        self.active = None
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        pkv = kwargs.get("past_key_values", kwargs.get("cache"))  # transformers 5 generate passes ``cache``
        ref = None
        if pkv is not None:
            try:
                ref = weakref.ref(pkv)
            except TypeError:  # pragma: no cover - tuple caches
                ref = None
        self._cache = (ref, pkv is not None and _cache_len(pkv) > 0)

    def _post_hook(self, _m: nn.Module, _args: tuple, _out: Any) -> None:
        self.active, self._mask, self._cache = None, None, None  # nothing stale leaks into the next call

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Active block per token of ``x`` (B, T, d): the most recent hit so far, -1 before any."""
        bsz, t, d = x.shape
        m = padding_rows(self._mask, x)
        ref, continuing = self._cache if self._cache is not None else (None, False)
        carry = self._carry if continuing and self._carry is not None and ref is not None and \
            self._carry[0] is not None and self._carry[0]() is ref() and self._carry[1].shape[0] == bsz else None
        xf = x.detach().float()
        s = (xf * m[..., None]).cumsum(1)
        c = m.cumsum(1)
        if carry is not None:
            s, c = s + carry[2][:, None].to(x.device), c + carry[3][:, None].to(x.device)
        q = s / c.clamp(min=1)[..., None] if self.key_type == "mean" else xf
        keys, radii, owner = self._table(x.device)
        dist = torch.cdist(q.reshape(-1, d), keys, compute_mode="donot_use_mm_for_euclid_dist").view(bsz, t, -1)
        hit = (dist <= radii) & (m[..., None] > 0)
        best = dist.masked_fill(~hit, float("inf")).argmin(-1)
        any_hit = hit.any(-1)
        blk = torch.where(any_hit, owner[best], torch.full_like(best, -1))
        pos = torch.where(any_hit, torch.arange(t, device=x.device).expand(bsz, t), torch.full_like(best, -1))
        pos = pos.cummax(1).values
        init = carry[1].to(x.device) if carry is not None else torch.full((bsz,), -1, dtype=torch.long, device=x.device)
        active = torch.where(pos >= 0, blk.gather(1, pos.clamp(min=0)), init[:, None])
        self._carry = (ref, active[:, -1].clone(), s[:, -1].clone(), c[:, -1].clone())
        return active

    def _route_hook(self, _m: nn.Module, args: tuple, _out: Any) -> None:
        if self.enabled and self.entries:
            self.active = self.route(args[0])

    def _lora_hook(self, name: str) -> Any:
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            active = self.active
            if not self.enabled or active is None:
                return out
            x = args[0]
            if active.shape != x.shape[:2]:
                raise RuntimeError(f"MELO routing at {self.module} saw shape {tuple(active.shape)} but {name} gets "
                                   f"{tuple(x.shape[:2])}; the LoRA modules must run after the router in one forward")
            present = set(active.unique().tolist())
            delta = None
            for i, e in enumerate(self.entries.values()):
                if i not in present or name not in e.parts:
                    continue
                a, b = e.parts[name]
                part = lora_out(x, a.to(x.device), b.to(x.device), e.scale) * (active == i).unsqueeze(-1)
                delta = part if delta is None else delta + part
            return out if delta is None else (out + delta).to(out.dtype)
        return hook


@register_entry
class MeloEntry(Entry):
    """One MELO edit: its LoRA block on the target modules and its keys/radii at the router."""

    kind = "melo"
    plane = "activations"
    removable_anywhere = True

    def __init__(self, router: str, key_type: str, keys: torch.Tensor, radii: torch.Tensor,
                 parts: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float, trainable: bool = False) -> None:
        f = (lambda t: t) if trainable else (lambda t: t.detach().to("cpu", torch.float32).contiguous())  # noqa: E731
        self.router, self.key_type, self.scale = router, key_type, float(scale)
        self.keys, self.radii = keys.detach().to("cpu", torch.float32), radii.detach().to("cpu", torch.float32)
        self.parts = {m: (f(a), f(b)) for m, (a, b) in parts.items()}

    def attach(self, host: Any, key: str) -> None:
        routers = melo_routers(host, create=True)
        r = routers.get(self.router)
        if r is None:
            r = routers[self.router] = MeloRouter(host, self.router, self.key_type)
        r.add(key, self)

    def detach(self, host: Any, key: str) -> None:
        r = melo_routers(host).get(self.router)
        if r is None:
            return
        r.discard(key)
        if not r.entries:
            r.close()
            drop_hook(host, ATTR, self.router)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"keys": self.keys, "radii": self.radii}
        for m, (a, b) in self.parts.items():
            out[f"{m}::A"], out[f"{m}::B"] = a, b
        return out

    def meta(self) -> dict[str, Any]:
        return {"router": self.router, "key_type": self.key_type, "scale": self.scale, "modules": sorted(self.parts)}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "MeloEntry":
        parts = {m: (tensors[f"{m}::A"], tensors[f"{m}::B"]) for m in meta["modules"]}
        return cls(meta["router"], meta["key_type"], tensors["keys"], tensors["radii"], parts, meta["scale"])

    def summary(self) -> str:
        r = next(iter(self.parts.values()))[0].shape[0] if self.parts else 0
        return (f"melo block rank {r} on {len(self.parts)} modules, {self.keys.shape[0]} key(s) at {self.router} "
                f"({self.key_type})")
