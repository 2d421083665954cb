"""Summaries of the CounterFact protocol's per-record blocks (memit's ``summarize.py``): kept apart from
:mod:`editwrap.evals.counterfact` so that :mod:`editwrap.evals.metrics` can summarise a run without
importing the scoring code (which imports metrics)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

__all__ = ["summarize_counterfact"]


def _mean(vals: Sequence[float]) -> float | None:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def _pairs(block: Mapping[str, Any], group: str) -> list[tuple[float, float]]:
    g = block.get(group) or {}
    return [(n, t) for n, t in zip(g.get("nll_new") or [], g.get("nll_true") or []) if n is not None and t is not None]


def _record_value(block: Mapping[str, Any], group: str, kind: str) -> float | None:
    """One record's Score (share of prompts the right way round), Magnitude or token accuracy."""
    if kind == "acc":
        hits = [h for hs in (block.get(group) or {}).get("hits") or [] for h in hs]
        return sum(hits) / len(hits) if hits else None
    pairs = _pairs(block, group)
    if not pairs:
        return None
    sign = -1 if group == "neighborhood" else 1  # neighbourhood: the true answer should stay ahead
    if kind == "score":
        return sum(sign * (t - n) > 0 for n, t in pairs) / len(pairs)
    return sum(sign * (math.exp(-n) - math.exp(-t)) for n, t in pairs) / len(pairs)


def summarize_counterfact(blocks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over records x100 (``summarize.py``); Score = harmonic mean of the three Scores; None
    where no record has the metric."""
    def metric(fn: Any) -> float | None:
        m = _mean([fn(b) for b in blocks])
        return None if m is None else 100 * m

    names = {"rewrite": ("Efficacy", "Rewrite"), "paraphrase": ("Paraphrase", "Paraphrase"),
             "neighborhood": ("Neighborhood", "Neighborhood")}
    out: dict[str, Any] = {"n": len(blocks)}
    for group, (prob, acc) in names.items():
        out[f"{prob} Score"] = metric(lambda b: _record_value(b, group, "score"))
        out[f"{prob} Magnitude"] = metric(lambda b: _record_value(b, group, "magnitude"))
        out[f"{acc} acc."] = metric(lambda b: _record_value(b, group, "acc"))
    scores = [out[f"{p} Score"] for p in ("Efficacy", "Paraphrase", "Neighborhood")]
    out["Score"] = None if None in scores else (0.0 if 0 in scores else 3 / sum(1 / s for s in scores))
    out["Generation entropy"] = metric(lambda b: b.get("ngram_entropy"))
    out["Consistency"] = metric(lambda b: b.get("consistency"))
    return out
