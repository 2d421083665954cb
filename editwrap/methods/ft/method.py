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
from ..base import MethodBase, register_method

__all__ = ["FtL", "FtM"]


def _shape(mod: torch.nn.Module) -> tuple[int, int]:
    w = mod.weight
    out_f = getattr(mod, "out_features", None) or (w.shape[1] if is_conv1d(mod) else w.shape[0])
    in_f = getattr(mod, "in_features", None) or (w.shape[0] if is_conv1d(mod) else w.shape[1])
    return int(out_f), int(in_f)


class _FineTune(MethodBase):
    family = "fine-tuning"
    objective = ""
    Hparams = FtHparams

    def default_hparams(self, model: Any) -> FtHparams:
        return FtHparams.for_model(model, self.objective)

    def compute(self, model: Any, facts: Sequence[Fact], hp: FtHparams) -> Edit:
        t0 = time.time()
        arch = arch_of(model)
        modules = [arch.mlp_out_at(i) for i in hp.layers]
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
                stack.enter_context(patch_output(
                    model, m, lambda out, x, d=d: (out + x.to(d.dtype) @ d.T).to(out.dtype)))
            step = target_loss_step(model, enc, target, hp.objective, arch.mlp_out_at(min(hp.layers)), hp.word_end)
            info = optimize(opt, step, hp.num_steps, hp.early_stop_loss, after_step=clamp)
        info["seconds"] = round(time.time() - t0, 3)
        entry = DeltaEntry({m: {"D": d.detach()} for m, d in deltas.items()})
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)


@register_method
class FtL(_FineTune):
    name = "ft-l"
    display_name = "FT-L"
    objective = "prompt_last"
    suites = ("general-ability", "speed", "knowedit-table", "knowedit-sequential")
    knowedit_reference = {
        "recent": {"Edit Succ.": 55.75, "Portability": 40.86, "Locality": 43.70, "Fluency": 529.24},
        "zsre": {"Edit Succ.": 53.93, "Portability": 45.64, "Locality": 73.42, "Fluency": 493.01},
        "wikibio": {"Edit Succ.": 66.33, "Locality": 79.86, "Fluency": 606.95},
        "counterfact": {"Edit Succ.": 45.15, "Portability": 33.60, "Locality": 50.48, "Fluency": 528.26},
        "convsent": {"Edit Succ.": 49.50, "Locality": 0.00, "Fluency": 607.86},
        "sanitation": {"Edit Succ.": 0.00, "Locality": 14.78, "Fluency": 439.10},
    }


@register_method
class FtM(_FineTune):
    name = "ft-m"
    display_name = "FT-M"
    rank = 1
    objective = "target_new"
    suites = ("main-other", "gpu-quant", "general-ability", "speed", "knowedit-table")
    knowedit_reference = {
        "recent": {"Edit Succ.": 100.00, "Portability": 65.44, "Locality": 64.33, "Fluency": 574.32},
        "zsre": {"Edit Succ.": 99.98, "Portability": 60.31, "Locality": 89.78, "Fluency": 552.26},
        "wikibio": {"Edit Succ.": 100.00, "Locality": 93.38, "Fluency": 612.69},
        "counterfact": {"Edit Succ.": 100.00, "Portability": 74.36, "Locality": 76.76, "Fluency": 575.62},
        "convsent": {"Edit Succ.": 46.10, "Locality": 0.00, "Fluency": 592.52},
        "sanitation": {"Edit Succ.": 75.00, "Locality": 47.07, "Fluency": 416.29},
    }
