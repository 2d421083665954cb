"""Fine-tuning one MLP output projection: FT-L (constrained, EasyEdit's FT-L) and FT-M.

The trainable weight change ``D`` is a dense side-car (the base weight is never written):
* FT-L scores all target tokens at the last prompt position (EasyEdit ``prompt_last``) and keeps
  every element of ``D`` within ±norm_constraint (ROME's constrained fine-tuning baseline);
* FT-M is teacher-forced cross-entropy on ``prompt + target`` masked to the target tokens.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence

import torch

from ...entries.delta import DeltaEntry, is_conv1d
from ...facts import Fact
from ...arch import arch_of
from .hparams import FtHparams
from ...ops.hooks import frozen, get_module, patch_output
from ...ops.train import edit_batch as _batch, optimize, target_loss_step
from ...stack import Edit
from ..base import register_method

__all__ = ["FtL", "FtM"]


def _shape(mod: torch.nn.Module) -> tuple[int, int]:
    w = mod.weight
    out_f = getattr(mod, "out_features", None) or (w.shape[1] if is_conv1d(mod) else w.shape[0])
    in_f = getattr(mod, "in_features", None) or (w.shape[0] if is_conv1d(mod) else w.shape[1])
    return int(out_f), int(in_f)


class _FineTune:
    name = ""
    objective = ""
    Hparams = FtHparams
    needs_subject = False

    def default_hparams(self, model: Any) -> FtHparams:
        return FtHparams.for_model(model, self.objective)

    def compute(self, model: Any, facts: Sequence[Fact], hp: FtHparams) -> Edit:
        t0 = time.time()
        arch = arch_of(model)
        modules = [arch.mlp_out_at(l) for l in hp.layers]
        device = next(model.parameters()).device
        deltas = {m: torch.zeros(_shape(get_module(model, m)), device=device, requires_grad=True) for m in modules}
        opt = torch.optim.Adam(list(deltas.values()), lr=hp.lr, weight_decay=hp.weight_decay)
        enc, target = _batch(model, facts, hp.objective)
        def clamp(_step: int) -> None:
            if hp.norm_constraint is not None:
                with torch.no_grad():
                    for d in deltas.values():
                        d.clamp_(-hp.norm_constraint, hp.norm_constraint)

        with contextlib.ExitStack() as stack:
            stack.enter_context(frozen(model))
            stack.enter_context(torch.enable_grad())
            for m, d in deltas.items():
                stack.enter_context(patch_output(model, m, lambda out, x, d=d: (out + x.to(d.dtype) @ d.T).to(out.dtype)))
            info = optimize(opt, target_loss_step(model, enc, target, hp.objective, arch.mlp_out_at(min(hp.layers)),
                                                   hp.fast_path),
                            hp.num_steps, hp.early_stop_loss, after_step=clamp)
        info["seconds"] = round(time.time() - t0, 3)
        entry = DeltaEntry({m: {"D": d.detach()} for m, d in deltas.items()})
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)


@register_method
class FtL(_FineTune):
    name = "ft-l"
    objective = "prompt_last"


@register_method
class FtM(_FineTune):
    name = "ft-m"
    objective = "target_new"
