"""Hyperparameters of MEMOIR (Wang et al., 2025).

The residual memory sits beside the MLP output projection of ``layer`` (by default layer 27 of 32
scaled by depth, the layer GRACE and WISE use). An edit writes ``round(mask_ratio × d)`` of the
memory's ``d`` input columns: the TopHash mask of its prompt. At inference the memory is applied
only to a sequence whose mask overlaps an edit's mask by at least ``threshold`` (a fraction of
the ``k`` mask features); every other sequence runs the base model unchanged.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from ...arch import layer_at_depth
from ..base import HparamsBase

__all__ = ["MemoirHparams"]


class MemoirHparams(HparamsBase):
    layer: int = Field(27, ge=0)
    #: fraction of the memory's input features each edit writes (and each mask holds)
    mask_ratio: float = Field(0.2, gt=0, le=1)
    #: smallest mask overlap (shared features / k) at which an input retrieves an edit
    threshold: float = Field(0.6, gt=0, le=1)
    n_iter: int = Field(30, ge=1)
    edit_lr: float = Field(0.1, gt=0)
    #: stop once the target NLL is below this (0 = always run n_iter)
    early_stop_loss: float = Field(0.02, ge=0)
    #: seed of the fixed permutation (the "hash" of TopHash); every edit on one memory must share it
    seed: int = 0

    def mask_features(self, d: int) -> int:
        """``k``: how many of a ``d``-wide input's features a mask holds."""
        return max(1, round(self.mask_ratio * d))

    @classmethod
    def for_model(cls, model: Any) -> "MemoirHparams":
        return cls(layer=layer_at_depth(model))
