"""Score one edit the way the speed benchmarks do: Edit Succ., first rephrase, locality.

Lighter than :class:`editwrap.evals.measure.Scorer` (no portability, one rephrase per fact), and
it times the edit call alone, so ``benchmarks/tradeoffs.py`` and ``benchmarks/vs_easyedit.py``
(which also drives EasyEdit's own editing code) measure the same thing the same way.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

from .metrics import answer_tokens, locality_score, token_accuracy

__all__ = ["edit_and_probe"]


def edit_and_probe(model: Any, tok: Any, facts: Sequence[Any], edit: Callable[[], Any]
                   ) -> tuple[Any, float, dict[str, list[float]]]:
    """Run ``edit()`` (which edits ``facts`` into ``model``) and score the edited model.

    Returns ``(edit's result, its CPU seconds, scores)``: ``scores["edit_succ"]`` per fact
    (teacher-forced token accuracy of the target), ``scores["rephrase"]`` per fact with a rephrase
    (its first), ``scores["locality"]`` per fact with locality probes (mean share of answer tokens
    unchanged from before the edit). Undoing the edit is the caller's.
    """
    probes = [[p for ps in f.locality.values() for p in ps] for f in facts]
    pre = [answer_tokens(model, tok, [p.prompt for p in ps], [p.answer for p in ps]) if ps else None
           for ps in probes]
    c0 = time.process_time()
    result = edit()
    cpu = time.process_time() - c0
    scores: dict[str, list[float]] = {
        "edit_succ": token_accuracy(model, tok, [f.text_prompt for f in facts], [f.target_new for f in facts]),
        "rephrase": [token_accuracy(model, tok, f.rephrase[:1], [f.target_new])[0] for f in facts if f.rephrase],
        "locality": []}
    for ps, p0 in zip(probes, pre):
        if ps:
            post = answer_tokens(model, tok, [p.prompt for p in ps], [p.answer for p in ps])
            scores["locality"].append(statistics.mean(locality_score(p0, post)))
    return result, cpu, scores
