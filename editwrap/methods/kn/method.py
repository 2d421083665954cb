"""Knowledge neurons (KN; Dai et al. 2022, as implemented in EasyEdit).

Locate: for every answer token, each MLP neuron's activation at the predicting position is scaled
from 0 to its value in ``steps`` steps; the integrated gradient of the answer token's probability,
times the activation, is the neuron's attribution (averaged over the answer's tokens). Neurons
above ``adaptive_threshold ×`` the largest attribution are the fact's knowledge neurons.

Edit: each located neuron's column of the MLP output projection gains the input embeddings of the
new answer's tokens minus those of the model's current answer. All located neurons of one layer
gain the same vector, so the layer's change is rank one: ``ΔW = c · 1_Nᵀ`` with ``1_N`` the
indicator of the layer's neurons, kept as a side-car (``U = c``, ``V = 1_N``) and exact to pop.

Speed: only the predicting position is affected by a neuron there, so the positions before it run
once (a KV cache) and each integrated-gradient row is one token; the rows of several layers share
a forward pass.

Differences from the reference: a neuron whose activation at the prompt's last position is negative
gets the opposite update (``follow_sign``), so that the update adds the new answer's embedding to
the residual stream rather than subtracting it. Gated MLPs (SwiGLU) have negative activations and
without this about half the located neurons push the old answer (docs/methods/kn.md). Attribution is
teacher-forced on the old answer's tokens (the reference appends the model's own greedy tokens,
which coincide whenever the model knows the fact); the neuron is the MLP output projection's input
(for gated MLPs ``act(gate)·up``, where the reference reads the gate projection's output before the
activation).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import torch

from ...entries.delta import DeltaEntry
from ...facts import Fact
from ...arch import arch_of
from .hparams import KnHparams
from ...ops.hooks import capture, frozen, get_module, patch_output
from ...ops.kvcache import cache_kwarg, prefix_cache_ok, reset_cache
from ...ops.profile import phase
from ...ops.tokens import target_ids
from ...ops.values import logits_at
from ...stack import Edit
from ..base import MethodBase, register_method

__all__ = ["Kn", "attribution_scores", "greedy_tokens"]


@torch.no_grad()
def greedy_tokens(host: Any, prompt_ids: list[int], n: int) -> list[int]:
    """The model's own next ``n`` tokens after the prompt (greedy)."""
    device = next(host.parameters()).device
    ids = list(prompt_ids)
    for _ in range(n):
        logits = host(input_ids=torch.tensor([ids], device=device)).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt_ids):]


def attribution_scores(host: Any, prompt_ids: list[int], answer: list[int], layers: Sequence[int], steps: int,
                       batch_rows: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated-gradient attribution ``[len(layers), n_neurons]`` of each MLP neuron to the
    teacher-forced probability of ``answer`` after ``prompt_ids`` (mean over its tokens), and the
    neurons' activations at the prompt's last position (same shape)."""
    arch = arch_of(host)
    modules = [arch.mlp_out_at(layer) for layer in layers]
    device = next(host.parameters()).device
    seq = list(prompt_ids) + list(answer[:-1])
    alphas = torch.linspace(0, 1, steps, device=device)
    total: torch.Tensor | None = None
    per_pass = max(1, batch_rows // steps)  # layers per forward
    cached = prefix_cache_ok(host)  # else (sliding-window layers) each row runs the whole sequence
    with frozen(host), torch.no_grad(), capture(host, modules, outputs=False) as acts:
        out = host.base_model(input_ids=torch.tensor([seq], device=device), use_cache=cached)
    full_cache = (out["cache"] if "cache" in out else out["past_key_values"]) if cached else None
    for i in reversed(range(len(answer))):  # the cache is cut back position by position
        token = answer[i]
        t = len(prompt_ids) - 1 + i  # the position predicting ``token``
        base = torch.stack([acts[m]["input"][0, t].float() for m in modules])  # [L, n_neurons]
        scores = torch.zeros_like(base)
        for lo in range(0, len(modules), per_pass):
            group = list(range(lo, min(lo + per_pass, len(modules))))
            rows = len(group) * steps
            if cached:
                reset_cache(full_cache, t)
            scaled = [(alphas[:, None] * base[g]).requires_grad_(True) for g in group]
            handles = [get_module(host, modules[g]).register_forward_pre_hook(_replace(k * steps, steps, scaled[k]))
                       for k, g in enumerate(group)]
            try:
                with frozen(host), torch.enable_grad():
                    if cached:
                        enc = {"input_ids": torch.full((rows, 1), seq[t], device=device),
                               "attention_mask": torch.ones((rows, t + 1), dtype=torch.long, device=device),
                               "position_ids": torch.full((rows, 1), t, device=device),
                               cache_kwarg(host): _repeat(full_cache, rows), "use_cache": True}
                    else:
                        enc = {"input_ids": torch.tensor([seq[:t + 1]] * rows, device=device)}
                    col = torch.full((rows,), 0 if cached else t, dtype=torch.long, device=device)
                    logits = logits_at(host, enc, torch.arange(rows, device=device), col)
                    probs = torch.softmax(logits, -1)[:, token]
                    grads = torch.autograd.grad(probs.sum(), scaled)
            finally:
                for h in handles:
                    h.remove()
            for k, g in enumerate(group):
                scores[g] = grads[k].sum(0) * base[g] / steps
        total = scores if total is None else total + scores
    assert total is not None
    at_prompt = torch.stack([acts[m]["input"][0, len(prompt_ids) - 1].float() for m in modules])
    return total / len(answer), at_prompt


@torch.no_grad()
def smallest_factor(host: Any, parts: dict[str, dict[str, torch.Tensor]], prompt_ids: list[int], new: list[int],
                    halvings: int) -> float:
    """The smallest of ``2^-halvings, …, 1/2, 1`` that, applied to the update, makes every token of
    the new answer the teacher-forced argmax after the prompt (1 when none does).

    The located neurons fire at most positions, not only after the prompt, so the update adds the
    new answer's embedding everywhere in proportion to their activations: at the reference's
    strength a 135M model then says the new answer after any prompt and after the answer itself
    ("Rome Rome Rome"). The weakest update that still edits the fact leaves the rest closer to
    the model it was.
    """
    if halvings == 0:
        return 1.0
    device = next(host.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(new[:-1])], device=device)
    cols = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(new), device=device)
    want = torch.tensor(new, device=device)
    for k in range(halvings, 0, -1):
        f = 2.0 ** -k
        with contextlib.ExitStack() as st:
            for m, p in parts.items():
                st.enter_context(patch_output(host, m, lambda out, x, U=p["U"] * f, V=p["V"]:
                                              (out + (x.to(U.dtype) @ V) @ U.T).to(out.dtype)))
            logits = host(input_ids=ids).logits[0, cols]
        if bool((logits.argmax(-1) == want).all()):
            return f
    return 1.0


def _repeat(cache: Any, rows: int) -> Any:
    """A copy of a one-row cache with ``rows`` rows (the original stays reusable)."""
    import copy

    c = copy.copy(cache)
    if getattr(cache, "layers", None) is not None:
        c.layers = [copy.copy(layer) for layer in cache.layers]
    for attr in ("key_cache", "value_cache"):
        if isinstance(cache.__dict__.get(attr), list):
            setattr(c, attr, list(cache.__dict__[attr]))
    c.batch_repeat_interleave(rows)
    return c


def _replace(start: int, n: int, values: torch.Tensor) -> Any:
    """Forward pre-hook: rows ``start:start+n`` of the module's input (one position) become ``values``."""
    def hook(_m: Any, args: tuple) -> tuple:
        x = args[0].clone()
        x[start:start + n, -1] = values.to(x.dtype)
        return (x, *args[1:])
    return hook


@register_method
class Kn(MethodBase):
    name = "kn"
    Hparams = KnHparams
    display_name = "KN"
    family = "neurons"

    def default_hparams(self, model: Any) -> KnHparams:
        return KnHparams()

    def compute(self, model: Any, facts: Sequence[Fact], hp: KnHparams) -> Edit:
        if len(facts) != 1:
            raise ValueError(f"KN edits one fact at a time (got {len(facts)}); push several KN edits")
        t0 = time.time()
        fact, tok, arch = facts[0], model.tokenizer, arch_of(model)
        layers = list(range(arch.n_layers)) if hp.layers is None else hp.layers
        if any(not 0 <= layer < arch.n_layers for layer in layers):
            raise ValueError(f"hparams.layers {layers} out of range: the model has {arch.n_layers} layers")
        prompt_ids = tok(fact.text_prompt)["input_ids"]
        new = target_ids(tok, fact.target_new)
        with phase("locate"):
            original = greedy_tokens(model, prompt_ids, len(new))
            old = target_ids(tok, fact.ground_truth) if fact.ground_truth else original
            scores, acts = attribution_scores(model, prompt_ids, old, layers, hp.steps, hp.batch_rows)
        flat = scores.flatten()
        keep = torch.nonzero(flat > hp.adaptive_threshold * flat.max()).squeeze(1) if flat.max() > 0 \
            else flat.argmax()[None]
        if hp.max_neurons is not None and len(keep) > hp.max_neurons:
            keep = keep[flat[keep].argsort(descending=True)[:hp.max_neurons]]
        n_neurons = scores.shape[1]
        emb = model.get_input_embeddings().weight.detach().float()
        scale = hp.embedding_scale if hp.embedding_scale is not None else (2.0 if len(new) == 1 else 1.0)
        c = scale * (emb[new].sum(0) - emb[original].sum(0))
        parts: dict[str, dict[str, torch.Tensor]] = {}
        neurons: list[list[int]] = []
        for idx in keep.tolist():
            li, pos = divmod(idx, n_neurons)
            module = arch.mlp_out_at(layers[li])
            if module not in parts:
                parts[module] = {"U": c[:, None].clone(), "V": torch.zeros(n_neurons, 1)}
            parts[module]["V"][pos, 0] = -1.0 if hp.follow_sign and acts[li, pos] < 0 else 1.0
            neurons.append([layers[li], pos])
        device = next(model.parameters()).device
        parts = {m: {k: v.to(device) for k, v in p.items()} for m, p in parts.items()}
        factor = smallest_factor(model, parts, prompt_ids, new, hp.scale_search) if parts else 1.0
        for p in parts.values():
            p["U"] = p["U"] * factor
        info = {"neurons": sorted(neurons), "n_neurons": len(neurons), "scale": scale * factor,
                "original": tok.decode(original), "seconds": round(time.time() - t0, 3)}
        return Edit(self.name, facts, hp.model_dump(mode="json"), DeltaEntry(parts), info=info)
