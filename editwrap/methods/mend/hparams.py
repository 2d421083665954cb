"""Hyperparameters of MEND: editing with a trained editor, and training that editor.

Defaults follow EasyEdit's MEND configs where CPU training allows (edit the last 3 MLP output
projections, identity-initialised editor, learned per-layer step sizes starting at 1e-4,
locality weight c_loc=1) and depart where it does not: the editor's hidden rank is 64 instead of
1920 and its learning rate 1e-3 instead of 1e-6, because training here runs a few hundred steps,
not 100k.
"""
from __future__ import annotations

import os
from typing import Any

from pydantic import Field

from ...arch import arch_of
from ..base import HparamsBase

__all__ = ["MendHparams", "MendTrainConfig", "EDITOR_ENV"]

#: environment variable naming the default trained MEND editor directory
EDITOR_ENV = "EDITWRAP_MEND_EDITOR"


class MendHparams(HparamsBase):
    #: directory of a trained editor (editor.safetensors + editor.json); None = $EDITWRAP_MEND_EDITOR
    editor: str | None = None
    #: multiplies the learned step sizes (1 = as trained)
    lr_scale: float = Field(1.0, gt=0)

    @classmethod
    def for_model(cls, model: Any) -> "MendHparams":
        return cls(editor=os.environ.get(EDITOR_ENV))


class MendTrainConfig(HparamsBase):
    #: layers whose MLP output projection the editor edits (None = the last 3)
    layers: list[int] | None = None
    rank: int = Field(64, ge=1)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(4, ge=1)
    #: 1e-3 (EasyEdit: 1e-6 over 100k+ steps): training here runs a few hundred steps
    lr: float = Field(1e-3, gt=0)
    #: learning rate of the log step sizes
    lr_lr: float = Field(0.1, gt=0)
    init_lr: float = Field(1e-4, gt=0)
    c_edit: float = Field(1.0, ge=0)
    c_loc: float = Field(1.0, ge=0)
    grad_clip: float = Field(10.0, gt=0)
    seed: int = 0
    #: checkpoint (editor + optimizer state) every this many steps
    save_every: int = Field(50, ge=1)

    def resolved_layers(self, model: Any) -> list[int]:
        n = arch_of(model).n_layers
        layers = self.layers if self.layers is not None else [n - 3, n - 2, n - 1]
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise ValueError(f"MEND layers {bad} out of range for a {n}-layer model")
        return sorted(set(layers))
