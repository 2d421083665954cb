"""MEND's editor network: per-layer gradient transforms mapping (x, δ) to a low-rank weight delta.

For a Linear ``y = W x`` the fine-tuning gradient of a loss L is ``∇W = Σ_t δ_t x_tᵀ`` with
``δ_t = ∂L/∂y_t``: a rank-T matrix given by the layer inputs ``x_t`` and output gradients ``δ_t``
of the T tokens. MEND (Mitchell et al. 2022) never forms ∇W: a small network ``g`` maps each
``(x_t, δ_t)`` to ``(x̃_t, δ̃_t)`` and the edit is ``ΔW = -η Σ_t δ̃_t x̃_tᵀ`` with a learned
per-layer step η. So the edit is exactly ``U Vᵀ`` with ``U = -η δ̃ᵀ`` (out×T) and ``V = x̃ᵀ``
(in×T) — an ordinary low-rank :class:`~editwrap.entries.delta.DeltaEntry`.

``g`` per layer: inputs standardised with running statistics gathered during training, then one
residual MLP with a low-rank hidden layer, ``z + W₂ relu(W₁ z + b₁) + b₂``, on ``z = [x; δ]``;
``W₂`` starts at zero so an untrained editor makes a plain (normalised) gradient step.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ...ops.hooks import get_module

__all__ = ["GradientTransform", "MendEditor", "grad_taps", "encode_edit", "EDITOR_FILES"]

EDITOR_FILES = ("editor.safetensors", "editor.json")


class GradientTransform(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        d = d_in + d_out
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(d, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(d, dtype=torch.float64))
        self.down = nn.Linear(d, rank)
        self.up = nn.Linear(rank, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    @torch.no_grad()
    def update_stats(self, z: torch.Tensor) -> None:
        """Chan et al.'s parallel Welford update with a batch of rows z (N × d)."""
        z = z.detach().to(torch.float64)
        n_b = z.shape[0]
        if n_b == 0:
            return
        mean_b = z.mean(0)
        m2_b = ((z - mean_b) ** 2).sum(0)
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta ** 2 * self.count * n_b / n
        self.count.copy_(n)

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.cat([x, d], -1).float()
        if self.count > 1:
            std = (self.m2 / (self.count - 1)).clamp(min=1e-12).sqrt()
            z = (z - self.mean.float()) / std.float().clamp(min=1e-6)
        h = z + self.up(torch.relu(self.down(z)))
        return h[..., : self.d_in], h[..., self.d_in:]


def _key(name: str) -> str:
    return name.replace(".", "__")


class MendEditor(nn.Module):
    """One GradientTransform and one learned log step size per edited module."""

    def __init__(self, modules: Sequence[str], shapes: Sequence[tuple[int, int]], rank: int = 64,
                 init_lr: float = 1e-4) -> None:
        super().__init__()
        self.module_names = list(modules)
        self.shapes = [tuple(int(v) for v in s) for s in shapes]  # (out, in)
        self.rank = int(rank)
        self.init_lr = float(init_lr)
        self.transforms = nn.ModuleDict({_key(m): GradientTransform(s[1], s[0], rank)
                                         for m, s in zip(self.module_names, self.shapes)})
        self.log_lrs = nn.Parameter(torch.full((len(self.module_names),), float(torch.log(torch.tensor(init_lr)))))

    def config(self) -> dict[str, Any]:
        return {"modules": self.module_names, "shapes": [list(s) for s in self.shapes], "rank": self.rank,
                "init_lr": self.init_lr}

    def factors(self, taps: dict[str, tuple[torch.Tensor, torch.Tensor]]
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{module: (U out×T, V in×T)}`` from per-token inputs x (T×in) and output grads δ (T×out)."""
        out = {}
        for i, m in enumerate(self.module_names):
            x, d = taps[m]
            xt, dt = self.transforms[_key(m)](x, d)
            out[m] = (-self.log_lrs[i].exp() * dt.T, xt.T)
        return out

    def update_stats(self, taps: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for m in self.module_names:
            x, d = taps[m]
            self.transforms[_key(m)].update_stats(torch.cat([x, d], -1))

    # -- persistence -----------------------------------------------------------------------------
    def save(self, out_dir: str | Path, info: dict[str, Any] | None = None) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(out / EDITOR_FILES[0]))
        (out / EDITOR_FILES[1]).write_text(json.dumps({"format": "editwrap-mend-editor/1", "config": self.config(),
                                                       "info": info or {}}, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path) -> tuple["MendEditor", dict[str, Any]]:
        from safetensors.torch import load_file

        p = Path(path)
        if not (p / EDITOR_FILES[0]).is_file() or not (p / EDITOR_FILES[1]).is_file():
            raise FileNotFoundError(f"{p} is not a trained MEND editor (expected {' and '.join(EDITOR_FILES)}); "
                                    "train one with `editwrap train mend --data ... --out DIR`")
        meta = json.loads((p / EDITOR_FILES[1]).read_text())
        cfg = meta["config"]
        ed = cls(cfg["modules"], [tuple(s) for s in cfg["shapes"]], cfg["rank"], cfg.get("init_lr", 1e-4))
        ed.load_state_dict(load_file(str(p / EDITOR_FILES[0])))
        return ed, meta


def encode_edit(tok: Any, prompts: Sequence[str], targets: Sequence[str], device: Any
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Right-padded ``prompt + " " + target`` batch and labels (-100 except on target tokens)."""
    from ...ops.tokens import batch_encode, target_ids

    tgts = [target_ids(tok, t) for t in targets]
    texts = [p + tok.decode(t) for p, t in zip(prompts, tgts)]
    enc = batch_encode(tok, texts, device)
    labels = torch.full_like(enc["input_ids"], -100)
    for i, t in enumerate(tgts):
        end = int(enc["attention_mask"][i].sum())
        labels[i, end - len(t): end] = torch.tensor(t, device=labels.device)
    return dict(enc), labels


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the labelled (target) tokens, teacher forced."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    lab = labels[:, 1:]
    mask = lab != -100
    tok_lp = lp.gather(2, lab.clamp(min=0).unsqueeze(2)).squeeze(2)
    return -(tok_lp * mask).sum() / mask.sum().clamp(min=1)


def grad_taps(model: nn.Module, modules: Sequence[str], enc: dict[str, torch.Tensor], labels: torch.Tensor
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-token inputs x and loss gradients δ of each module's output, over non-padding tokens.

    The model is not changed: a zero tensor that requires grad is added to each module's output
    so autograd reaches it without any weight needing grad.
    """
    inputs: dict[str, torch.Tensor] = {}
    zeros: dict[str, torch.Tensor] = {}
    handles = []

    def make(name: str):
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            inputs[name] = args[0].detach()
            z = torch.zeros_like(out, requires_grad=True)
            zeros[name] = z
            return out + z
        return hook

    try:
        for m in modules:
            handles.append(get_module(model, m).register_forward_hook(make(m)))
        with torch.enable_grad():
            loss = nll(model(**enc).logits, labels)
            grads = torch.autograd.grad(loss, [zeros[m] for m in modules])
    finally:
        for h in handles:
            h.remove()
    keep = enc["attention_mask"].bool()
    return {m: (inputs[m][keep].float(), g[keep].float()) for m, g in zip(modules, grads)}
