"""Generation-based edit metrics: what ``generate`` answers, beside EasyEdit's teacher-forced scores.

EasyEdit's Edit Succ. feeds the gold answer's own prefix and checks each next token; an application
calls ``generate`` and reads the text. Re-evaluations ("The Mirage of Model Editing", Yang et al.
2025) find the two far apart, so every fact record is also scored on greedy generations:

* decoding: greedy from the bare prompt (optionally wrapped in the tokenizer's chat template),
  left-padded batches with position ids from the mask (a row decodes as if alone), at most
  ``answer_budget`` new tokens = the target's token count + ``margin`` (default
  :data:`DEFAULT_MARGIN` = 8), stopping at EOS or at the end of the first non-blank line;
* :func:`normalize_answer`: SQuAD's normalisation (lowercase, punctuation and the articles
  a/an/the removed, whitespace collapsed), except that punctuation (ASCII and Unicode ``P*``)
  becomes a space instead of vanishing, so "mezzo-soprano" matches the target "mezzo soprano";
* ``success``: the normalised answer's words begin with the normalised target's words (a word-level
  prefix: "Parisian" does not match "Paris"); ``f1``: SQuAD token F1 against the target;
* locality: the edited model's normalised answer equals the unedited model's (taken in ``pre``).
"""
from __future__ import annotations

import math
import re
import string
import unicodedata
from typing import Any, Mapping, Sequence

import torch

from editwrap.ops.forward import model_device as _device
from editwrap.ops.forward import pad_id as _pad_id
from editwrap.ops.forward import padded_forward as _forward
from editwrap.ops.forward import token_ids as _ids

__all__ = ["DEFAULT_MARGIN", "normalize_answer", "answer_match", "answer_f1", "answer_budget", "cut_answer",
           "generate_answers", "score_answers", "locality_match"]

DEFAULT_MARGIN = 8
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD ``normalize_answer`` (lower, drop punctuation, drop a/an/the, collapse spaces), with
    punctuation turned into a space (SQuAD deletes it, gluing "mezzo-soprano" into one word that no
    target "mezzo soprano" matches) and Unicode punctuation (curly quotes, dashes) included."""
    text = "".join(" " if c in _PUNCT or unicodedata.category(c).startswith("P") else c for c in text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_match(answer: str, target: str) -> float:
    """1.0 when the normalised answer starts with the normalised target, word by word; NaN when the
    target normalises to nothing (nothing to look for, like EasyEdit's NaN for an empty target)."""
    a, t = normalize_answer(answer).split(), normalize_answer(target).split()
    if not t:
        return math.nan
    return float(a[:len(t)] == t)


def answer_f1(answer: str, target: str) -> float:
    """SQuAD token F1 between the normalised answer and target (NaN for an empty target)."""
    a, t = normalize_answer(answer).split(), normalize_answer(target).split()
    if not t:
        return math.nan
    common = sum(min(a.count(w), t.count(w)) for w in set(t))
    if common == 0:
        return 0.0
    p, r = common / len(a), common / len(t)
    return 2 * p * r / (p + r)


def answer_budget(tok: Any, prompt: str, target: str, margin: int = DEFAULT_MARGIN) -> int:
    """New tokens allowed: the target's token count as teacher forcing sees it
    (``prompt + " " + target`` minus the prompt) plus ``margin`` (room for a leading space, "the",
    a longer phrasing); at least 1."""
    return max(1, len(_ids(tok, prompt + " " + target)) - len(_ids(tok, prompt))) + margin


def cut_answer(text: str) -> str:
    """The answer in a decoded continuation: leading blank lines skipped, cut at the next newline.
    (A bare question often makes a base model start a new line before answering; cutting there
    would read every answer as empty.)"""
    text = text.lstrip()
    return text.split("\n", 1)[0].strip()


def _prompt_ids(tok: Any, text: str, chat: bool) -> list[int]:
    if not chat:
        return _ids(tok, text)
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, Mapping) else ids
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    return list(ids[0]) if ids and isinstance(ids[0], list) else ids


def _eos_ids(model: Any, tok: Any) -> set[int]:
    """The tokenizer's EOS and the model's generation-config EOS ids (chat models end turns there)."""
    ids = {tok.eos_token_id} if getattr(tok, "eos_token_id", None) is not None else set()
    cfg = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(cfg) if isinstance(cfg, (list, tuple)) else ({cfg} if cfg is not None else set())
    return ids


def _done(tok: Any, new: Sequence[int], budget: int, eos: set[int]) -> bool:
    if len(new) >= budget or any(t in eos for t in new):
        return True
    return "\n" in tok.decode(list(new), skip_special_tokens=True).lstrip()


def _greedy(model: Any, tok: Any, seqs: list[list[int]], budgets: list[int], eos: set[int]) -> list[list[int]]:
    """Greedy new tokens per row until every row is done (:func:`_done`); HF ``generate`` (KV cache)
    when the model has it, else a loop over padding-exact forwards."""
    pad, width = _pad_id(tok), max(map(len, seqs))
    if hasattr(model, "generate"):
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: Any, **kw: Any) -> torch.BoolTensor:
                rows = input_ids[:, width:].tolist()
                return torch.tensor([_done(tok, r, b, eos) for r, b in zip(rows, budgets)], device=input_ids.device)

        dev = _device(model)
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=dev)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=dev)
        res = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(budgets), do_sample=False,
                             pad_token_id=pad, stopping_criteria=StoppingCriteriaList([_Stop()]),
                             temperature=None, top_p=None, top_k=None)
        return res[:, width:].tolist()
    new: list[list[int]] = [[] for _ in seqs]
    for _ in range(max(budgets)):
        live = [i for i, (n, b) in enumerate(zip(new, budgets)) if not _done(tok, n, b, eos)]
        if not live:
            break
        logits, _ = _forward(model, [seqs[i] + new[i] for i in live], pad, "left")
        for i, t in zip(live, logits[:, -1].argmax(-1).tolist()):
            new[i].append(t)
    return new


@torch.no_grad()
def generate_answers(model: Any, tok: Any, prompts: Sequence[str], budgets: Sequence[int], *,
                     chat_template: bool = False, batch_size: int = 16) -> list[str]:
    """Greedy answer text per prompt (see the module doc), at most ``budgets[i]`` new tokens each.
    A batch decodes to its largest budget and each row is cut to its own, so batching never
    changes an answer."""
    if len(prompts) != len(budgets):
        raise ValueError(f"got {len(prompts)} prompts but {len(budgets)} budgets")
    eos = _eos_ids(model, tok)
    out: list[str] = []
    for b in range(0, len(prompts), batch_size):
        seqs = [_prompt_ids(tok, p, chat_template) for p in prompts[b:b + batch_size]]
        bud = [int(x) for x in budgets[b:b + batch_size]]
        for new, n in zip(_greedy(model, tok, seqs, bud, eos), bud):
            new = new[:n]
            stop = next((i for i, t in enumerate(new) if t in eos), len(new))
            out.append(cut_answer(tok.decode(new[:stop], skip_special_tokens=True)))
    return out


def score_answers(answers: Sequence[str], targets: Sequence[str]) -> dict[str, list[float]]:
    """``{"success": [...], "f1": [...]}`` per (answer, target)."""
    return {"success": [answer_match(a, t) for a, t in zip(answers, targets)],
            "f1": [answer_f1(a, t) for a, t in zip(answers, targets)]}


def locality_match(pre_answers: Sequence[str], post_answers: Sequence[str]) -> list[float]:
    """Per locality prompt: 1.0 when the edited model's normalised answer equals the unedited one's."""
    if len(pre_answers) != len(post_answers):
        raise ValueError(f"{len(pre_answers)} pre-edit but {len(post_answers)} post-edit answers")
    return [float(normalize_answer(a) == normalize_answer(b)) for a, b in zip(pre_answers, post_answers)]
