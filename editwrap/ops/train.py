"""Teacher-forced training batches and losses shared by every method that optimises on facts.

* ``edit_batch(model, facts, "target_new")`` encodes ``prompt + " " + target`` right-padded with
  labels masked (-100) everywhere except the target tokens; ``edit_loss`` is the mean NLL of those
  tokens (EasyEdit's FT-M / LoRA / GRACE / WISE objective).
* ``"prompt_last"`` scores all target tokens at the last prompt position (EasyEdit's FT-L).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..facts import Fact
from . import exact
from .tokens import batch_encode, target_ids

__all__ = ["edit_batch", "edit_loss", "edit_loss_at_targets", "target_loss_step", "prompt_lengths", "optimize"]


def edit_batch(model: Any, facts: Sequence[Fact], objective: str = "target_new") -> tuple[dict[str, torch.Tensor], Any]:
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


def prompt_lengths(labels: torch.Tensor) -> torch.Tensor:
    """Index of the last prompt token of each row of a ``target_new`` label tensor."""
    first_target = (labels != -100).float().argmax(1)
    return first_target - 1


def edit_loss(logits: torch.Tensor, target: Any, objective: str = "target_new", reduce: bool = True) -> torch.Tensor:
    """Mean NLL of the target tokens (per row when ``reduce`` is False; ``target_new`` only)."""
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
    if not reduce:
        return -(lp * mask).sum(1) / mask.sum(1)
    return -(lp * mask).sum() / mask.sum()


def edit_loss_at_targets(model: Any, enc: dict[str, torch.Tensor], target: Any, objective: str = "target_new"
                         ) -> torch.Tensor:
    """:func:`edit_loss` of ``model(**enc)`` with the vocabulary projection run only at the
    positions the loss reads (a handful of the batch's positions; the head is a large share of a
    small model's forward). Same value to float tolerance."""
    from .values import logits_at

    if objective == "prompt_last":
        last, tgts = target
        rows = torch.arange(len(tgts), device=last.device)
        logp = torch.log_softmax(logits_at(model, enc, rows, last), -1)
        return torch.stack([-logp[i, torch.tensor(t, device=logp.device)].mean() for i, t in enumerate(tgts)]).mean()
    rows, cols = (target[:, 1:] != -100).nonzero(as_tuple=True)
    logp = torch.log_softmax(logits_at(model, enc, rows, cols), -1)
    return -logp.gather(1, target[rows, cols + 1][:, None]).sum() / len(rows)


def target_loss_step(model: Any, enc: dict[str, torch.Tensor], target: Any, objective: str,
                     module: str) -> Callable[[], tuple[torch.Tensor, dict]]:
    """The ``step_fn`` of :func:`optimize` for a method that trains something at ``module`` on the
    target tokens' NLL. The blocks below ``module`` run in the first step only and are replayed
    afterwards (:func:`~editwrap.ops.replay.replay_steps`), and only the target positions are
    projected to the vocabulary: the same loss to float tolerance (``exact_paths(fast_path=False)``
    runs the plain loss)."""
    if not exact.current().fast_path:
        return lambda: (edit_loss(model(**enc).logits, target, objective), {})
    from .replay import replay_steps

    lower = replay_steps(model, module)

    def step() -> tuple[torch.Tensor, dict]:
        with lower():
            return edit_loss_at_targets(model, enc, target, objective), {}
    return step


def optimize(opt: torch.optim.Optimizer, step_fn: Any, num_steps: int, early_stop_loss: float = 0.0,
             before_step: Any = None, after_step: Any = None) -> dict[str, Any]:
    """The edit-training loop every trained method shares.

    ``step_fn() -> (loss, info)`` runs the forward pass; training stops early once the loss is
    below ``early_stop_loss`` (or ``info["early_stop_on"]`` when the step gives one: the part of a
    regularised loss the threshold is about, e.g. AdaLoRA's NLL without its orthogonality term);
    ``before_step()`` runs between backward and the optimiser step
    (e.g. gradient masks), ``after_step(step)`` after it (e.g. projections, rank allocation).
    Returns the last step's info plus ``loss`` and ``steps``.
    """
    info: dict[str, Any] = {}
    for step in range(num_steps):
        opt.zero_grad()
        loss, extra = step_fn()
        crit = float(extra.pop("early_stop_on", loss.item()))
        info = {"loss": round(loss.item(), 5), **extra, "steps": step + 1}
        if crit < early_stop_loss:
            break
        loss.backward()
        if before_step is not None:
            before_step()
        opt.step()
        if after_step is not None:
            after_step(step)
    return info
