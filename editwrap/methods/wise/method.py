"""WISE: lifelong editing in a side memory with a routing threshold (Wang et al., NeurIPS 2024).

``compute`` trains the increment ``δ`` of the open knowledge shard's side weight ``W + Δ + δ``
(the side output replaces the main one while editing) with EasyEdit's WISE losses: cross-entropy
of the targets plus the activation margins — the side memory must shift the activations of the
edit prompt (in-scope distance ≥ beta, and ≥ out-of-scope + gamma) but not those of an unrelated
prompt (out-of-scope distance ≤ alpha). Gradients are masked by the shard's random mask (new
shard: new mask), SGD at ``edit_lr``, the side weight kept within ±norm_constraint of the main one.
The unrelated prompt comes from ``hp.loc_corpus`` (``hparams.py``), never from the fact's
scored locality probes unless asked for (``"fact"``). Distances skip padding (``act_distance``).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import time
from typing import Any, Sequence

import torch
from torch.nn import functional as F

from .entry import WiseEntry, act_distance, wise_memories
from ...facts import Fact
from ...arch import arch_of
from .hparams import WiseHparams
from ...ops.corpus import iter_corpus
from ...ops.hooks import capture, frozen, patch_output
from ...ops.train import edit_batch, optimize, target_loss_step
from ...stack import Edit
from ..base import MethodBase, register_method

__all__ = ["Wise"]

NEUTRAL = "The weather in the mountains is often cold in winter"


def _pos_mean(t: torch.Tensor) -> torch.Tensor:
    pos = t[t > 0]
    return pos.mean() if pos.numel() else torch.zeros((), device=t.device)


@functools.lru_cache(maxsize=4)
def _loc_pool(source: str | None, chars: int) -> tuple[str, ...]:
    texts = tuple(t[:chars] for t in itertools.islice(iter_corpus(source), 1000) if t.strip())
    if not texts:
        raise ValueError(f"WISE loc_corpus {source!r} has no texts; give a corpus file with text, prompt or "
                         f"loc fields, or leave loc_corpus unset for the default corpus")
    return texts


def out_of_scope_text(facts: Sequence[Fact], hp: WiseHparams, t: int) -> str:
    """The unrelated text edit number ``t`` of a side memory is trained not to shift (hparams doc)."""
    if hp.loc_corpus == "fact":
        return next((p.prompt for ps in facts[0].locality.values() for p in ps), NEUTRAL)
    pool = _loc_pool(hp.loc_corpus, hp.loc_chars)
    return pool[t % len(pool)]


def hidden_act_of(model: Any) -> str:
    cfg = model.config
    return str(getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", "gelu_new"))


@register_method
class Wise(MethodBase):
    name = "wise"
    Hparams = WiseHparams
    display_name = "WISE"
    family = "memory"
    rank = 1
    suites = ("gpu-adapters", "adapters-zsre")

    def compute(self, model: Any, facts: Sequence[Fact], hp: WiseHparams) -> Edit:
        from transformers.activations import ACT2FN

        t0 = time.time()
        module = arch_of(model).mlp_out_at(hp.layer)
        hidden_act = hidden_act_of(model)
        act = ACT2FN[hidden_act]
        mem = wise_memories(model).get(module)
        state = mem.state if mem is not None else None
        loc = out_of_scope_text(facts, hp, state.total if state is not None else 0)
        enc, labels = edit_batch(model, [*facts, Fact(prompt=loc, target_new="the")], "target_new")
        labels[-1] = -100
        with contextlib.ExitStack() as st:
            st.enter_context(frozen(model))
            if mem is not None:
                was = mem.enabled
                mem.enabled = False
                st.callback(setattr, mem, "enabled", was)
            with capture(model, [module]) as cap, torch.no_grad():
                model(**enc)
            d_in, d_out = cap[module]["input"].shape[-1], cap[module]["output"].shape[-1]
            device = enc["input_ids"].device
            rows = enc["attention_mask"]  # the edit batch is padded: distances skip padding
            cur = state.cur if state is not None and state.cur is not None else torch.zeros(d_out, d_in)
            cur = cur.to(device)
            new_mask = state is None or state.cur is None
            if new_mask:
                g = torch.Generator().manual_seed(hp.seed + (state.total if state else 0))
                mask = torch.rand(d_out, d_in, generator=g) < hp.mask_ratio
            else:
                mask = state.mask
            maskf = mask.to(device, torch.float32)
            delta = torch.zeros(d_out, d_in, device=device, requires_grad=True)
            opt = torch.optim.SGD([delta], lr=hp.edit_lr)
            seen: dict[str, torch.Tensor] = {}

            def fn(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                side = out + F.linear(x.float(), cur + delta)  # float32: distances see the unrounded side
                seen["main"], seen["side"] = out, side
                return side.to(out.dtype)

            st.enter_context(patch_output(model, module, fn))
            st.enter_context(torch.enable_grad())

            # the facts' NLL (the out-of-scope row's labels are all masked), which also runs the
            # forward that fills ``seen``
            nll = target_loss_step(model, enc, labels, "target_new", module)

            def step() -> tuple[torch.Tensor, dict[str, float]]:
                ft, _ = nll()
                ins = act_distance(act, seen["main"][:-1], seen["side"][:-1], mask=rows[:-1])
                out_d = act_distance(act, seen["main"][-1:], seen["side"][-1:], mask=rows[-1:])
                a_loss = (_pos_mean(out_d.view(-1, 1) - ins + hp.gamma) + _pos_mean(out_d - hp.alpha)
                          + _pos_mean(hp.beta - ins))
                return ft + a_loss, {"ft_loss": round(ft.item(), 4), "in_scope": round(ins.mean().item(), 3),
                                     "out_scope": round(out_d.mean().item(), 3)}

            @torch.no_grad()
            def project(_step: int) -> None:  # side weight within ±norm_constraint of the main one
                if hp.norm_constraint is not None:
                    delta.copy_((cur + delta).clamp(-hp.norm_constraint, hp.norm_constraint) - cur)

            info = optimize(opt, step, hp.n_iter, hp.early_stop_loss, before_step=lambda: delta.grad.mul_(maskf),
                            after_step=project)
            with torch.no_grad():
                model(**enc)
                in_scope = float(act_distance(act, seen["main"][:-1], seen["side"][:-1], mask=rows[:-1]).mean())
        entry = WiseEntry(module, state.total if state else 0, delta.detach(), mask if new_mask else None, in_scope,
                          hidden_act, hp.act_ratio, hp.save_freq, hp.merge_freq, hp.density)
        info.update(seconds=round(time.time() - t0, 3), in_scope_final=round(in_scope, 3))
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)
