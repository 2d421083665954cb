"""UltraEdit (Gu et al. 2025): one closed-form least-squares step per batch, with lifelong normalisation.

For every edited projection and every position that predicts a target token (teacher-forced
``prompt + " " + target_new``), one forward/backward pass of the summed NLL records

* the key ``k`` (the projection's input) and ``g = ∂NLL/∂(projection output)``;

the rows ``z = [k, g]`` update running per-coordinate statistics (count ``n``, mean ``μ``, variance)
that live on the stack; both parts are standardised with them, ``k̂ = (k − μ_k)/σ_k`` and
``ĝ = (g − μ_g)/σ_g``, and each position asks for the output change ``v = −lr·‖k̂‖²·ĝ``. The ridge
least-squares weight shift that realises ``ΔW k_i ≈ v_i`` is

    ΔW = Vᵀ (K Kᵀ + λI)⁻¹ K        (K: [N, d_in] raw keys, V: [N, d_out], N answer positions)

kept as the rank-N factors ``U = Vᵀ``, ``V_fac = Kᵀ(KKᵀ + λI)⁻¹`` (the reference solves the
equivalent ``(KᵀK + λI)⁻¹KᵀV`` in d_in×d_in). The statistics after this edit are stored in the
entry (``norm_mean``/``norm_var``/``norm_count`` per module) and the next UltraEdit edit starts from
the topmost UltraEdit entry on the stack, so popping an edit rolls them back and a saved stack
continues with the same statistics.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ...entries.delta import DeltaEntry
from ...facts import Fact
from ...arch import arch_of
from .hparams import UltraEditHparams
from ...ops.norms import norm_info
from ...ops.hooks import frozen, patch_output
from ...ops.keys import logits_at
from ...stack import Edit
from ..base import MethodBase, register_method

__all__ = ["UltraEdit", "RunningStats", "answer_rows"]

_STAT_KEYS = ("norm_mean", "norm_var", "norm_count")


class RunningStats:
    """Per-coordinate count/mean/population-variance of feature rows, merged exactly (Chan et al.)."""

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        self.mean, self.var, self.count = mean.double(), var.double(), float(count)

    @classmethod
    def prior(cls, dim: int, count: float) -> "RunningStats":
        """``count`` pseudo-observations at zero (0 = the reference's empty start)."""
        z = torch.zeros(dim, dtype=torch.float64)
        return cls(z, z.clone(), count)

    @classmethod
    def from_part(cls, part: dict[str, torch.Tensor]) -> "RunningStats":
        return cls(part["norm_mean"], part["norm_var"], float(part["norm_count"].reshape(-1)[0]))

    def to_part(self) -> dict[str, torch.Tensor]:
        return {"norm_mean": self.mean.float(), "norm_var": self.var.float(),
                "norm_count": torch.tensor([self.count], dtype=torch.float32)}

    def update(self, x: torch.Tensor) -> "RunningStats":
        """Statistics of the old rows together with the rows of ``x`` [m, dim]."""
        x = x.double()
        m = x.shape[0]
        n = self.count + m
        if m == 0:
            return self
        bmean = x.mean(0)
        bm2 = ((x - bmean) ** 2).sum(0)
        delta = bmean - self.mean
        mean = self.mean + delta * (m / n)
        m2 = self.var * self.count + bm2 + delta ** 2 * (self.count * m / n)
        return RunningStats(mean, m2 / n, n)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − μ)/σ`` with the unbiased σ (as the reference), guarded for tiny counts."""
        unbiased = self.var * (self.count / max(self.count - 1.0, 1.0))
        return (x.double() - self.mean) / (unbiased.sqrt() + torch.finfo(torch.float32).eps)


def answer_rows(tok: Any, facts: Sequence[Fact]) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Per fact: the teacher-forced input ids, the positions that predict target tokens, and those
    target ids. The split matches the KnowEdit scorer (tokenise ``prompt + " " + target`` and
    take the tokens after the prompt's own token count)."""
    seqs, cols, tgts = [], [], []
    for i, f in enumerate(facts):
        full = tok(f.text_prompt + " " + f.target_new)["input_ids"]
        n = len(tok(f.text_prompt)["input_ids"])
        if n < 1 or len(full) <= n:
            raise ValueError(f"facts[{i}]: prompt or target tokenises to nothing ({f.text_prompt!r} -> "
                             f"{f.target_new!r})")
        seqs.append(full[:-1])
        cols.append(list(range(n - 1, len(full) - 1)))
        tgts.append(full[n:])
    return seqs, cols, tgts


def _keys_and_grads(model: Any, modules: list[str], facts: Sequence[Fact], chunk: int
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """Keys and output gradients at the answer positions, [N, d] per module (float64, CPU), and the
    summed NLL. A zero tensor added to each module's output carries the gradient, so no model
    parameter needs (or gets) a gradient."""
    tok = model.tokenizer
    seqs, cols, tgts = answer_rows(tok, facts)
    device = next(model.parameters()).device
    keys: dict[str, list[torch.Tensor]] = {m: [] for m in modules}
    grads: dict[str, list[torch.Tensor]] = {m: [] for m in modules}
    total = 0.0
    for s in range(0, len(facts), chunk):
        idx = range(s, min(s + chunk, len(facts)))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, :len(seqs[i])] = 1
        enc = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        rows = torch.tensor([r for r, i in enumerate(idx) for _ in cols[i]], device=device)
        pos = torch.tensor([c for i in idx for c in cols[i]], device=device)
        target = torch.tensor([t for i in idx for t in tgts[i]], device=device)
        carriers: dict[str, torch.Tensor] = {}
        inputs: dict[str, torch.Tensor] = {}

        def make(name: str) -> Any:
            def fn(out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
                inputs[name] = inp.detach()
                carriers[name] = torch.zeros_like(out, requires_grad=True)
                return out + carriers[name]
            return fn

        with contextlib.ExitStack() as stack:
            for m in modules:
                stack.enter_context(patch_output(model, m, make(m)))
            with torch.enable_grad():
                logits = logits_at(model, enc, rows, pos)
                loss = F.cross_entropy(logits, target, reduction="sum")  # batch-independent per token
                gs = torch.autograd.grad(loss, [carriers[m] for m in modules])
        total += float(loss.detach())
        for m, g in zip(modules, gs):
            keys[m].append(inputs[m][rows, pos].detach().to("cpu", torch.float64))
            grads[m].append(g[rows, pos].to("cpu", torch.float64))
    return ({m: torch.cat(v) for m, v in keys.items()}, {m: torch.cat(v) for m, v in grads.items()}, total)


def _previous_stats(model: Any) -> Edit | None:
    """The topmost UltraEdit edit on the stack: its entry holds the statistics to continue from."""
    for e in reversed(model.stack.edits):
        if e.method == UltraEdit.name and isinstance(e.entry, DeltaEntry):
            return e
    return None


def ridge_factors(K: torch.Tensor, V: torch.Tensor, ridge: float, KM: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of ``ΔW = Vᵀ(K M Kᵀ + λI)⁻¹ K M`` (M symmetric, ``KM = K M``; M = I by default):
    ``U = Vᵀ`` [d_out, N] and ``(KM)ᵀ(K M Kᵀ + λI)⁻¹`` [d_in, N]. With M = I this is the
    reference's ``((KᵀK + λI)⁻¹KᵀV)ᵀ``, solved in N×N instead of d_in×d_in."""
    KM = K if KM is None else KM
    gram = KM @ K.T
    gram = 0.5 * (gram + gram.T) + ridge * torch.eye(K.shape[0], dtype=K.dtype)
    return V.T.contiguous(), torch.linalg.solve(gram, KM).T.contiguous()  # gram is symmetric


def whiten_keys(K: torch.Tensor, stats: RunningStats, d_in: int, floor: float) -> torch.Tensor:
    """``K S⁻¹`` with ``S = D + μμᵀ`` the running second moment of the keys (D = variance + floor
    × its mean), by Sherman–Morrison: the solve then avoids the directions every key shares, which
    unrelated inputs share too (``key_space="whitened"``, an editwrap option, not in the reference)."""
    mu, d = stats.mean[:d_in], stats.var[:d_in]
    d = d + floor * d.mean() + torch.finfo(torch.float32).tiny
    KD, muD = K / d, mu / d
    return KD - torch.outer(KD @ mu, muD) / (1.0 + mu @ muD)


@register_method
class UltraEdit(MethodBase):
    name = "ultraedit"
    Hparams = UltraEditHparams
    display_name = "UltraEdit"
    family = "lifelong"

    def compute(self, model: Any, facts: Sequence[Fact], hp: UltraEditHparams) -> Edit:
        t0 = time.time()
        arch = arch_of(model)
        if hp.layers[-1] >= arch.n_layers:
            raise ValueError(f"UltraEdit layers {hp.layers} out of range for a {arch.n_layers}-layer model; set "
                             f"layers=[...]")
        modules = [arch.mlp_out_at(i) for i in hp.layers]
        below = _previous_stats(model)
        with frozen(model):
            keys, grads, nll = _keys_and_grads(model, modules, facts, hp.chunk_size)
        parts: dict[str, dict[str, torch.Tensor]] = {}
        fresh = []
        for m in modules:
            K, G = keys[m], grads[m]
            d_in = K.shape[1]
            old = below.entry.parts.get(m) if below is not None else None
            if old is not None and all(k in old for k in _STAT_KEYS) and old["norm_mean"].numel() == d_in + G.shape[1]:
                stats = RunningStats.from_part(old)
            else:
                stats = RunningStats.prior(d_in + G.shape[1], hp.norm_prior_count)
                fresh.append(m)
            stats = stats.update(torch.cat([K, G], dim=1))  # the batch is part of its own statistics
            z = stats.standardise(torch.cat([K, G], dim=1))
            k_hat, g_hat = z[:, :d_in], z[:, d_in:]
            V = -hp.lr * (k_hat * k_hat).sum(-1, keepdim=True) * g_hat
            KM = whiten_keys(K, stats, d_in, hp.var_floor) if hp.key_space == "whitened" else None
            U, Vf = ridge_factors(K, V, hp.ridge, KM)
            parts[m] = {"U": U.float(), "V": Vf.float(), **stats.to_part()}
        n_tok = next(iter(keys.values())).shape[0]
        info = {"seconds": round(time.time() - t0, 3), "stats_from": below.id if below is not None else None,
                "stats_fresh_modules": fresh, "n_positions": n_tok,
                "norm_count": next(iter(parts.values()))["norm_count"].item(), "nll_before": round(nll / n_tok, 4)}
        info.update(norm_info(model, parts, hp.max_delta_norm))  # norm control, as for locate-then-edit
        return Edit(self.name, facts, hp.model_dump(mode="json"), DeltaEntry(parts), info=info)
