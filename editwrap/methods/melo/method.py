"""MELO: neuron-indexed dynamic LoRA (Yu et al., AAAI 2024), one LoRA block per edit.

``compute`` (1) reads the key of each fact at the router (the input of the MLP output projection
at ``router_layer``: its running mean over the prompt, or the last prompt token), with a radius
``radius · ‖key‖``; (2) trains a fresh rank-``rank`` LoRA block on the target modules (``A``
Kaiming-uniform, ``B`` zero, as PEFT) with teacher-forced CE on prompt + target, Adam with
EasyEdit's step decay, routed through the same :class:`~editwrap.methods.melo.entry.MeloRouter` code
used at inference (a temporary router holding only the new block), so training sees exactly the
positions inference will adapt. Blocks already on the stack are switched off while training (the
new key is nearest for its own prompt, so only the new block acts there). The model is not
modified; the result is a :class:`~editwrap.methods.melo.entry.MeloEntry`.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Sequence

import torch

from .entry import MeloEntry, MeloRouter, melo_routers
from ...facts import Fact
from ...arch import arch_of
from .hparams import MeloHparams
from ...ops.hooks import capture, frozen, get_module
from ...ops.train import edit_batch, edit_loss, optimize, prompt_lengths
from ...stack import Edit
from ..base import MethodBase, register_method

__all__ = ["Melo", "resolve_modules"]


def resolve_modules(model: Any, hp: MeloHparams) -> tuple[str, list[str]]:
    """(router module, target module names), checked against the model; errors name the field."""
    arch = arch_of(model)
    n = arch.n_layers
    if hp.router_layer >= n:
        raise ValueError(f"melo: router_layer={hp.router_layer} but the model has {n} layers (0..{n - 1})")
    layers = list(hp.layers) or [i for i in (hp.router_layer + 1, hp.router_layer + 2) if i < n]
    bad = [i for i in layers if i <= hp.router_layer or i >= n]
    if not layers or bad:
        raise ValueError(f"melo: layers={layers or hp.layers} must be after router_layer={hp.router_layer} and below "
                         f"{n} (the key must not depend on the LoRA it routes); bad: {bad}")
    targets = []
    for i in layers:
        for t in hp.target_modules:
            name = f"{arch.block_at(i)}.{t}"
            try:
                mod = get_module(model, name)
            except KeyError as e:
                raise ValueError(f"melo: target_modules entry {t!r} does not exist in layer {i}: {e.args[0]}") from None
            if not hasattr(mod, "weight"):
                raise ValueError(f"melo: target_modules entry {t!r} ({name}) is not a projection with a weight")
            targets.append(name)
    return arch.mlp_out_at(hp.router_layer), targets


def _with_continuation(model: Any, enc: dict[str, torch.Tensor], labels: torch.Tensor, n: int
                       ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Append the unedited model's greedy continuation (``n`` tokens) after each target.

    Returns ``(enc, labels, mask)``: labels still cover the target only; ``mask`` marks the
    positions that predict the token after the target and the continuation's tokens."""
    rows = []
    ends = enc["attention_mask"].sum(1).tolist()
    pad = model.tokenizer.pad_token_id
    with torch.no_grad():
        for i, end in enumerate(ends):
            ids = enc["input_ids"][i:i + 1, :end]
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 do_sample=False, pad_token_id=pad) if n else ids
            rows.append(out[0])
    width = max(len(r) for r in rows)
    dev = enc["input_ids"].device
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=dev)
    att = torch.zeros_like(ids)
    lab = torch.full_like(ids, -100)
    mask = torch.zeros(ids.shape, dtype=torch.bool, device=dev)
    for i, (r, end) in enumerate(zip(rows, ends)):
        ids[i, :len(r)], att[i, :len(r)] = r, 1
        lab[i, :end] = labels[i, :end]
        mask[i, end - 1:len(r)] = True
    return {"input_ids": ids, "attention_mask": att}, lab, mask


def _loss_fn(model: Any, enc: dict[str, torch.Tensor], labels: torch.Tensor, base_logits: torch.Tensor,
             mask: torch.Tensor, weight: float) -> Any:
    """The target NLL, plus ``weight`` × KL(unedited ‖ edited) where ``mask`` is set.

    The block stays routed on for every token generated after the prompt (the running-mean key
    stays near the prompt's); trained on the target alone it also pushes the target there
    ("Rome Rome Rome …"). The KL term keeps what the model says after the new answer as it was.
    """
    base = torch.log_softmax(base_logits[mask].float(), -1) if weight else None

    def step() -> tuple[torch.Tensor, dict[str, Any]]:
        logits = model(**enc).logits
        nll = edit_loss(logits, labels)
        if not weight:
            return nll, {}
        kl = torch.nn.functional.kl_div(torch.log_softmax(logits[mask].float(), -1), base, log_target=True,
                                        reduction="batchmean")
        return nll + weight * kl, {"nll": round(nll.item(), 5), "after_kl": round(kl.item(), 5),
                                   "early_stop_on": nll.item()}
    return step


@register_method
class Melo(MethodBase):
    name = "melo"
    Hparams = MeloHparams
    display_name = "MELO"
    family = "memory"
    rank = 2
    suites = ("adapters-zsre",)

    def compute(self, model: Any, facts: Sequence[Fact], hp: MeloHparams) -> Edit:
        t0 = time.time()
        router, targets = resolve_modules(model, hp)
        enc, labels = edit_batch(model, facts, "target_new")
        last = prompt_lengths(labels)
        with contextlib.ExitStack() as st:
            st.enter_context(frozen(model))
            for r in melo_routers(model).values():  # blocks below are off while training
                st.callback(setattr, r, "enabled", r.enabled)
                r.enabled = False
            st.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(hp.seed)
            with capture(model, [router, *targets]) as cap, torch.no_grad():
                model(**enc)
            if hp.after_target_kl:
                enc, labels, after = _with_continuation(model, enc, labels, hp.after_target_tokens)
            else:
                after = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
            with torch.no_grad():
                base_logits = model(**enc).logits if hp.after_target_kl else None
            x = cap[router]["input"].float()
            keys = torch.stack([x[i, : int(p) + 1].mean(0) if hp.key_type == "mean" else x[i, int(p)]
                                for i, p in enumerate(last.tolist())])
            radii = hp.radius * keys.norm(dim=1)
            parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            for name in targets:
                d_in, d_out = cap[name]["input"].shape[-1], cap[name]["output"].shape[-1]
                a = torch.empty(hp.rank, d_in)
                torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                parts[name] = (a.to(x.device).requires_grad_(True), torch.zeros(d_out, hp.rank, device=x.device,
                                                                                 requires_grad=True))
            block = MeloEntry(router, hp.key_type, keys, radii, parts, hp.lora_alpha / hp.rank, trainable=True)
            trainer = MeloRouter(model, router, hp.key_type)
            st.callback(trainer.close)
            trainer.add("training", block)
            params = [t for ab in parts.values() for t in ab]
            opt = torch.optim.Adam(params, lr=hp.lr)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.lr_decay_every, gamma=hp.lr_decay)
            with torch.enable_grad():
                info = optimize(opt, _loss_fn(model, enc, labels, base_logits, after, hp.after_target_kl), hp.num_steps,
                                hp.early_stop_loss, after_step=lambda _s: sched.step())
        entry = MeloEntry(router, hp.key_type, keys, radii, parts, hp.lora_alpha / hp.rank)
        info.update(seconds=round(time.time() - t0, 3), keys=int(keys.shape[0]),
                    blocks_below=sum(len(r.entries) for r in melo_routers(model).values()))
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)
