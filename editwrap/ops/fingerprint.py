"""Identify a base model cheaply (to check saved stacks) and hash its state exactly (for tests)."""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

__all__ = ["model_fingerprint", "state_dict_hash", "tensor_hash"]


def tensor_hash(t: torch.Tensor, h: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    h = h or hashlib.sha256()
    t = t.detach().to("cpu").contiguous()
    h.update(str((t.dtype, tuple(t.shape))).encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h


def state_dict_hash(model: nn.Module) -> str:
    """sha256 over every tensor of ``state_dict()`` (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        tensor_hash(t, h)
    return h.hexdigest()


def model_fingerprint(model: nn.Module, overrides: dict[str, torch.Tensor] | None = None) -> str:
    """Hash of the architecture config plus a strided sample of a few weights.

    Cheap enough to run on every save/load and sensitive to a different checkpoint of the same
    architecture. ``overrides`` supplies the original tensors of merged layers so a merged model
    still reports its base fingerprint.
    """
    cfg = getattr(model, "config", None)
    d = cfg.to_dict() if cfg is not None else {}
    keep = {k: d[k] for k in sorted(d) if k in {"model_type", "vocab_size", "hidden_size", "num_hidden_layers",
                                                 "n_layer", "n_embd", "intermediate_size", "num_attention_heads",
                                                 "n_head", "architectures"}}
    h = hashlib.sha256(json.dumps(keep, sort_keys=True).encode())
    sd = model.state_dict()
    names = sorted(sd)
    pick = names[:: max(1, len(names) // 8)][:8] + names[-1:]
    for name in pick:
        t = (overrides or {}).get(name, sd[name])
        flat = t.detach().reshape(-1)
        h.update(name.encode())
        sample = flat[:: max(1, flat.numel() // 4096)][:4096]
        if not sample.is_floating_point():
            sample = sample.to(torch.int64)
        tensor_hash(sample.to(torch.float64), h)
    return h.hexdigest()[:16]
