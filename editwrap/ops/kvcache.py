"""KV-cache helpers shared by the optimisations that rerun only a prompt's last positions.

Value optimisation (``ops.values``) and knowledge-neuron attribution (``methods.kn``) run the
positions before some column once, keep their keys/values, and then run many batches of the
remaining positions against them. Between batches the cache must go back to the prefix and be
cut off the previous batch's autograd graph.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["cache_kwarg", "prefix_cache_ok", "reset_cache"]


def cache_kwarg(host: Any) -> str:
    """transformers 5 names a forward's KV cache ``cache``; 4.x ``past_key_values``."""
    params = inspect.signature(host.base_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def reset_cache(cache: Any, keep: int) -> None:
    """Back to the first ``keep`` positions, layer by layer (replayed layers never grew), and cut
    the kept tensors off the step's graph (a slice of the step's concatenated tensors would keep
    it alive, and the next step's graph would grow on top of it)."""
    def cut(t: Any) -> Any:
        return t[..., :keep, :].detach() if isinstance(t, torch.Tensor) and t.dim() >= 2 else t

    for layer in getattr(cache, "layers", None) or []:  # transformers 5.x
        for attr in ("keys", "values"):
            if isinstance(getattr(layer, attr, None), torch.Tensor):
                setattr(layer, attr, cut(getattr(layer, attr)))
    for attr in ("key_cache", "value_cache"):  # transformers 4.x
        ts = cache.__dict__.get(attr)
        if isinstance(ts, list):
            ts[:] = [cut(t) for t in ts]


def prefix_cache_ok(host: Any) -> bool:
    """Whether a cached prefix plus the remaining positions reproduces a full forward exactly with
    the plain cache logic above: every layer attends to the whole sequence. Sliding-window layers
    (Gemma 2/3, Mistral) keep a different cache and mask; callers run whole sequences instead."""
    cfg = host.config
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return all(t == "full_attention" for t in types)
    return not getattr(cfg, "sliding_window", None)
