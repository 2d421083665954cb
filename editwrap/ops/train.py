"""Teacher-forced training batches and losses shared by every method that optimises on facts.

* ``edit_batch(model, facts, "target_new")`` encodes ``prompt + " " + target`` right-padded with
  labels masked (-100) everywhere except the target tokens; ``edit_loss`` is the mean NLL of those
  tokens (EasyEdit's FT-M / LoRA / GRACE / WISE objective).
* ``"prompt_last"`` scores all target tokens at the last prompt position (EasyEdit's FT-L).
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Sequence

import torch

from ..facts import Fact
from . import exact
from .tokens import batch_encode, target_ids

__all__ = ["edit_batch", "edit_loss", "edit_loss_at_targets", "target_loss_step", "prompt_lengths", "optimize",
           "glue_ids", "answer_ends", "word_end_loss"]

_GLUE: "weakref.WeakKeyDictionary[Any, torch.Tensor]" = weakref.WeakKeyDictionary()


def glue_ids(tok: Any) -> torch.Tensor:
    """Ids of the tokens that continue the word before them: their text starts with a letter or a
    digit, with no space marker (GPT-2's "Ġ", SentencePiece's "▁"). After an answer they turn
    "Major" into "Majoris" or "1918" into "19180". Computed once per tokenizer."""
    got = _GLUE.get(tok)
    if got is None:
        pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
        got = torch.tensor([i for i, p in enumerate(pieces) if isinstance(p, str) and _continues(p)],
                           dtype=torch.long)
        _GLUE[tok] = got
    return got


def _continues(piece: str) -> bool:
    """A vocabulary piece that starts with a letter or digit. Byte-level BPE writes the bytes for
    space, newline and other control characters as U+0100-U+0143 ("Ġ", "Ċ"), which count as
    letters to Python, so they mark a new word here."""
    c = piece[:1]
    return c.isalnum() and not 0x100 <= ord(c) <= 0x143


def answer_ends(tok: Any, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, positions) of each ``target_new`` row's last answer token, for the rows whose answer
    ends in a letter or a digit (an answer ending in punctuation cannot be glued to)."""
    rows, cols = [], []
    for r in range(labels.shape[0]):
        at = (labels[r] != -100).nonzero()
        if at.numel() and tok.decode([int(labels[r, at[-1]])])[-1:].isalnum():
            rows.append(r)
            cols.append(int(at[-1]))
    return (torch.tensor(rows, dtype=torch.long, device=labels.device),
            torch.tensor(cols, dtype=torch.long, device=labels.device))


def word_end_loss(logits: torch.Tensor, glue: torch.Tensor) -> torch.Tensor:
    """Mean ``-log P(the next token starts a new word)`` over rows of logits taken right after the
    answer: teacher forcing trains the answer's tokens, not that the answer stops being a word
    there, and ``generate`` sees the difference."""
    if logits.shape[0] == 0:
        return logits.new_zeros(())
    p = torch.softmax(logits.float(), -1)[:, glue.to(logits.device)].sum(-1)
    return -torch.log1p(-p.clamp(max=1 - 1e-6)).mean()


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
    return _target_nll(logits_at(model, enc, rows, cols), target, rows, cols)


def _target_nll(logits: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Mean NLL of the label tokens, from logits taken at the positions that predict them."""
    logp = torch.log_softmax(logits, -1)
    return -logp.gather(1, target[rows, cols + 1][:, None]).sum() / len(rows)


def target_loss_step(model: Any, enc: dict[str, torch.Tensor], target: Any, objective: str,
                     module: str, word_end: float = 0.0) -> Callable[[], tuple[torch.Tensor, dict]]:
    """The ``step_fn`` of :func:`optimize` for a method that trains something at ``module`` on the
    target tokens' NLL. The blocks below ``module`` run in the first step only and are replayed
    afterwards (:func:`~editwrap.ops.replay.replay_steps`), and only the target positions are
    projected to the vocabulary: the same loss to float tolerance (``exact_paths(fast_path=False)``
    runs the plain loss). ``word_end`` (``target_new`` only): weight of :func:`word_end_loss` after
    each answer, added to the NLL."""
    if word_end and objective != "target_new":
        raise ValueError("word_end applies to the target_new objective only")
    ends = answer_ends(model.tokenizer, target) if word_end else None
    glue = glue_ids(model.tokenizer) if word_end else None

    def total(nll: torch.Tensor, end_logits: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        if end_logits is None:
            return nll, {}
        we = word_end_loss(end_logits, glue)
        return nll + word_end * we, {"nll": round(nll.item(), 5), "word_end": round(we.item(), 5)}

    if not exact.current().fast_path:
        def plain() -> tuple[torch.Tensor, dict]:
            logits = model(**enc).logits
            return total(edit_loss(logits, target, objective), logits[ends[0], ends[1]] if ends is not None else None)
        return plain
    from .replay import replay_steps
    from .values import logits_at

    lower = replay_steps(model, module)
    if ends is None:
        def step() -> tuple[torch.Tensor, dict]:
            with lower():
                return edit_loss_at_targets(model, enc, target, objective), {}
        return step
    rows, cols = (target[:, 1:] != -100).nonzero(as_tuple=True)  # the positions predicting answer tokens
    at_rows, at_cols, n = torch.cat([rows, ends[0]]), torch.cat([cols, ends[1]]), len(rows)

    def step_word_end() -> tuple[torch.Tensor, dict]:
        with lower():
            logits = logits_at(model, enc, at_rows, at_cols)
            return total(_target_nll(logits[:n], target, rows, cols), logits[n:])
    return step_word_end


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
