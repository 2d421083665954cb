"""T-Patcher: one trainable neuron per fact added to the last FFN layer (Huang et al., ICLR 2023).

The patch (key, bias, value) is trained with the edit cross-entropy, the activation loss (the
patch must fire on the edit input: exp(−a(q_e))) and the memory loss (it must stay silent on
unrelated inputs: exp(a(x_m) − memory_bound) and exp(a(x_m) − a(q_e) + margin)); see
:mod:`editwrap.methods.tpatcher.hparams`. The memory set is the FFN inputs of a few texts of the default
corpus (``editwrap.ops.corpus``).
"""
from __future__ import annotations

import contextlib
import itertools
import time
from typing import Any, Sequence

import torch

from .entry import TPatcherEntry, patch_out
from ...facts import Fact
from ...arch import arch_of
from .hparams import TPatcherHparams
from ...ops.corpus import iter_corpus
from ...ops.hooks import capture, frozen, patch_output
from ...ops.tokens import batch_encode
from ...ops.train import edit_batch, edit_loss, optimize, prompt_lengths
from ...stack import Edit
from ..base import MethodBase, register_method

__all__ = ["TPatcher"]


def _memory_inputs(model: Any, module: str, n: int) -> torch.Tensor:
    texts = [t[:300] for t in itertools.islice(iter_corpus(None), n)]
    enc = batch_encode(model.tokenizer, texts, next(model.parameters()).device)
    with capture(model, [module], outputs=False) as cap, torch.no_grad():
        model(**enc)
    return cap[module]["input"][enc["attention_mask"].bool()].float()


@register_method
class TPatcher(MethodBase):
    name = "t-patcher"
    Hparams = TPatcherHparams
    display_name = "T-Patcher"
    family = "memory"
    rank = 3

    def compute(self, model: Any, facts: Sequence[Fact], hp: TPatcherHparams) -> Edit:
        t0 = time.time()
        arch = arch_of(model)
        layer = hp.layer if hp.layer >= 0 else arch.n_layers + hp.layer
        module = arch.mlp_out_at(layer).rsplit(".", 1)[0]
        enc, labels = edit_batch(model, facts, "target_new")
        rows = torch.arange(len(facts))
        with contextlib.ExitStack() as st:
            st.enter_context(frozen(model))
            with capture(model, [module], outputs=True) as cap, torch.no_grad():
                model(**enc)
            q = cap[module]["input"][rows, prompt_lengths(labels)].float()          # (n, d_in)
            mem = _memory_inputs(model, module, hp.memory_texts)                    # (M, d_in)
            d_out = cap[module]["output"].shape[-1]
            k = (q / q.pow(2).sum(1, keepdim=True)).T.clone().requires_grad_(True)  # a(q_e) = 1 at start
            b = torch.zeros(len(facts), device=q.device, requires_grad=True)
            v = torch.zeros(len(facts), d_out, device=q.device, requires_grad=True)
            opt = torch.optim.Adam([k, b, v], lr=hp.lr)
            st.enter_context(patch_output(model, module, lambda out, x: (out + patch_out(x, k, b, v)).to(out.dtype)))
            st.enter_context(torch.enable_grad())

            def step() -> tuple[torch.Tensor, dict[str, float]]:
                ce = edit_loss(model(**enc).logits, labels)
                a_e = (q * k.T).sum(1) + b                                          # (n,)
                a_m = mem @ k + b                                                   # (M, n)
                l_a = torch.exp(-a_e).mean()
                l_m = (torch.exp(a_m - hp.memory_bound) + torch.exp(a_m - a_e + hp.margin)).mean()
                return ce + hp.act_weight * l_a + hp.mem_weight * l_m, {
                    "ce": round(ce.item(), 4), "act_edit": round(a_e.min().item(), 3),
                    "act_memory_max": round(a_m.max().item(), 3)}

            info = optimize(opt, step, hp.num_steps, hp.early_stop_loss)
        info["seconds"] = round(time.time() - t0, 3)
        entry = TPatcherEntry(module, k.detach(), b.detach(), v.detach())
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)
