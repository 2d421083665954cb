"""Batched forward passes over token lists of different lengths, each row scored as if alone.

Shared by the evaluation metrics, generation and the analysis tools; any callable returning logits
(a transformers model, an edited one, a plain module) works.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch

__all__ = ["token_ids", "pad_id", "model_device", "padded_forward"]


def token_ids(tok: Any, text: str) -> list[int]:
    """The token ids of ``text`` as a flat list (whatever container the tokenizer returns)."""
    ids = tok(text)["input_ids"]
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    return list(ids[0]) if ids and isinstance(ids[0], list) else ids


def pad_id(tok: Any) -> int:
    """The id to pad with: the pad token, else EOS, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        if getattr(tok, attr, None) is not None:
            return int(getattr(tok, attr))
    return 0


def model_device(model: Any) -> torch.device:
    """Where the model's (first) parameters live; CPU for a parameterless callable."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _takes_position_ids(model: Any) -> bool:
    params = inspect.signature(model.forward).parameters.values()
    return any(p.name == "position_ids" or p.kind is p.VAR_KEYWORD for p in params)


def padded_forward(model: Any, seqs: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, list[int]]:
    """Logits for a padded batch and, per row, the column where its tokens start.

    Position ids are rebuilt from the mask, so a left-padded row is scored exactly as if alone
    (EasyEdit left-pads without position ids, which shifts absolute-position models like GPT-2).
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    starts = []
    for i, s in enumerate(seqs):
        start = width - len(s) if side == "left" else 0
        ids[i, start:start + len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, start:start + len(s)] = 1
        starts.append(start)
    dev = model_device(model)
    kw: dict[str, Any] = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev)}
    if _takes_position_ids(model):
        kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(dev)
    with torch.no_grad():
        out = model(**kw)
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if logits is None:
        logits = out["logits"] if isinstance(out, Mapping) else out[0]
    return logits.float(), starts
