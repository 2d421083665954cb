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

from ..entries.delta import DeltaEntry, is_conv1d
from ..facts import Fact
from ..hparams.arch import arch_of
from ..hparams.ft import FTHparams
from ..ops.hooks import frozen, get_module, patch_output
from ..ops.tokens import batch_encode, target_ids
from ..stack import Edit
from .base import register_method

__all__ = ["FTL", "FTM"]


def _shape(mod: torch.nn.Module) -> tuple[int, int]:
    w = mod.weight
    out_f = getattr(mod, "out_features", None) or (w.shape[1] if is_conv1d(mod) else w.shape[0])
    in_f = getattr(mod, "in_features", None) or (w.shape[0] if is_conv1d(mod) else w.shape[1])
    return int(out_f), int(in_f)


def _batch(model: Any, facts: Sequence[Fact], objective: str) -> tuple[dict[str, torch.Tensor], Any]:
    tok = model.tokenizer
    device = next(model.parameters()).device
    prompts = [f.text_prompt for f in facts]
    tgts = [target_ids(tok, f.target_new) for f in facts]
    if objective == "prompt_last":
        enc = batch_encode(tok, prompts, device)
        last = enc["attention_mask"].sum(1) - 1
        return enc, (last, tgts)
    texts = [p + tok.decode(t) for p, t in zip(prompts, tgts)]
    enc = batch_encode(tok, texts, device)
    labels = torch.full_like(enc["input_ids"], -100)
    for i, t in enumerate(tgts):
        end = int(enc["attention_mask"][i].sum())
        labels[i, end - len(t): end] = torch.tensor(t, device=device)
    return enc, labels


def _loss(logits: torch.Tensor, target: Any, objective: str) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), -1)
    if objective == "prompt_last":
        last, tgts = target
        losses = []
        for i, t in enumerate(tgts):
            losses.append(-logp[i, last[i], torch.tensor(t, device=logp.device)].mean())
        return torch.stack(losses).mean()
    labels = target
    shifted = labels[:, 1:]
    mask = shifted != -100
    lp = logp[:, :-1].gather(2, shifted.clamp(min=0).unsqueeze(2)).squeeze(2)
    return -(lp * mask).sum() / mask.sum()


class _FT:
    name = ""
    objective = ""
    Hparams = FTHparams
    needs_subject = False

    def default_hparams(self, model: Any) -> FTHparams:
        return FTHparams.for_model(model, self.objective)

    def compute(self, model: Any, facts: Sequence[Fact], hp: FTHparams) -> Edit:
        t0 = time.time()
        arch = arch_of(model)
        modules = [arch.mlp_out_at(l) for l in hp.layers]
        device = next(model.parameters()).device
        deltas = {m: torch.zeros(_shape(get_module(model, m)), device=device, requires_grad=True) for m in modules}
        opt = torch.optim.Adam(list(deltas.values()), lr=hp.lr, weight_decay=hp.weight_decay)
        enc, target = _batch(model, facts, hp.objective)
        info: dict[str, float] = {}
        with contextlib.ExitStack() as stack:
            stack.enter_context(frozen(model))
            stack.enter_context(torch.enable_grad())
            for m, d in deltas.items():
                stack.enter_context(patch_output(model, m, lambda out, x, d=d: out + (x.to(d.dtype) @ d.T).to(out.dtype)))
            for step in range(hp.num_steps):
                opt.zero_grad()
                loss = _loss(model(**enc).logits, target, hp.objective)
                info = {"loss": loss.item(), "steps": step + 1}
                if loss.item() < hp.early_stop_loss:
                    break
                loss.backward()
                opt.step()
                if hp.norm_constraint is not None:
                    with torch.no_grad():
                        for d in deltas.values():
                            d.clamp_(-hp.norm_constraint, hp.norm_constraint)
        info["seconds"] = round(time.time() - t0, 3)
        entry = DeltaEntry({m: {"D": d.detach()} for m, d in deltas.items()})
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)


@register_method
class FTL(_FT):
    name = "ft-l"
    objective = "prompt_last"


@register_method
class FTM(_FT):
    name = "ft-m"
    objective = "target_new"
