"""MEMOIR: lifelong editing in a residual memory through sparse, input-dependent masks
(Wang et al., 2025, "MEMOIR: Lifelong Model Editing with Minimal Overwrite and Informed Retention").

``compute`` (one fact): the edit's TopHash mask comes from the mean input of the memory's module
over the prompt tokens; the memory's masked columns (as the stack has them now) are trained with
Adam on the target tokens' NLL while the memory is applied to the whole edit sequence with that
mask. The entry keeps the mask's columns and their change, so the memory outside the mask and the
model's weights are never written.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence

import torch
from torch.nn import functional as F

from ...arch import arch_of
from ...facts import Fact
from ...ops.hooks import capture, frozen, patch_output
from ...ops.tokens import batch_encode
from ...ops.train import edit_batch, optimize, prompt_lengths, target_loss_step
from ...stack import Edit
from ..base import MethodBase, register_method
from .entry import MemoirEntry, hash_permutation, mask_rows, mean_input, memory_off, tophash
from .hparams import MemoirHparams

__all__ = ["Memoir", "prompt_masks"]


@torch.no_grad()
def prompt_masks(model: Any, texts: Sequence[str], hp: MemoirHparams, batch_size: int = 32) -> torch.Tensor:
    """(len(texts), d) 0/1 TopHash masks of prompts as MEMOIR routes them: the mean input of the
    memory's module over each prompt's real tokens, on the model without its MEMOIR memory (the
    memory sits at that module's output, so it never changes the module's input). An edit stores its
    prompt's mask; the first forward of a generation is routed by the prompt's mask. The overlap of
    two masks is ``(a * b).sum() / k``. For choosing ``threshold`` without editing."""
    module = arch_of(model).mlp_out_at(hp.layer)
    device = next(model.parameters()).device
    means = []
    with memory_off(model, module):
        for i in range(0, len(texts), batch_size):
            enc = batch_encode(model.tokenizer, list(texts[i:i + batch_size]), device)
            with capture(model, [module], outputs=False) as cap:
                model(**enc)
            means.append(mean_input(cap[module]["input"], enc["attention_mask"]).cpu())
    mean = torch.cat(means) if means else torch.zeros(0, 0)
    d = mean.shape[-1]
    return mask_rows(mean, hp.mask_features(d), hash_permutation(d, hp.seed))


@register_method
class Memoir(MethodBase):
    name = "memoir"
    Hparams = MemoirHparams
    display_name = "MEMOIR"
    family = "memory"
    rank = 2
    single_fact = True

    def compute(self, model: Any, facts: Sequence[Fact], hp: MemoirHparams) -> Edit:
        if len(facts) != 1:
            raise ValueError(f"MEMOIR edits one fact at a time (got {len(facts)}); edit the facts one by one")
        t0 = time.time()
        arch = arch_of(model)
        if hp.layer >= arch.n_layers:
            raise ValueError(f"MEMOIR layer {hp.layer} out of range for a {arch.n_layers}-layer model; set layer "
                             f"below {arch.n_layers}")
        module = arch.mlp_out_at(hp.layer)
        enc, labels = edit_batch(model, facts, "target_new")
        n_prompt = int(prompt_lengths(labels)[0]) + 1
        with contextlib.ExitStack() as st:
            st.enter_context(frozen(model))
            live = st.enter_context(memory_off(model, module))
            with capture(model, [module]) as cap, torch.no_grad():
                model(**enc)
            x, out = cap[module]["input"], cap[module]["output"]
            d_in, d_out = x.shape[-1], out.shape[-1]
            k = hp.mask_features(d_in)
            perm = hash_permutation(d_in, hp.seed)
            idx = tophash(mean_input(x[:, :n_prompt]).cpu(), k, perm)[0]
            device = enc["input_ids"].device
            base = (live.weight[:, idx] if live is not None and live.entries else torch.zeros(d_out, k)).to(device)
            cols = idx.to(device)
            delta = torch.zeros(d_out, k, device=device, requires_grad=True)
            opt = torch.optim.Adam([delta], lr=hp.edit_lr)

            def fn(o: torch.Tensor, xin: torch.Tensor) -> torch.Tensor:
                return o + F.linear(xin.float()[..., cols], base + delta).to(o.dtype)

            st.enter_context(patch_output(model, module, fn))
            st.enter_context(torch.enable_grad())
            info = optimize(opt, target_loss_step(model, enc, labels, "target_new", module), hp.n_iter,
                            hp.early_stop_loss)
        entry = MemoirEntry(module, idx, delta.detach(), perm, hp.threshold)
        info.update(seconds=round(time.time() - t0, 3), mask_features=k)
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)
