"""Lockstep scoring of many records: their metric requests merged into full batches.

A record's scoring is written once, as a generator (a coroutine) that yields a list of metric
requests ``(fn, texts, cols, kwargs)`` and receives, for each, ``fn``'s results for those rows, in
order; it returns the record. :func:`drive` runs many such generators together: in each round it
takes every pending request, merges those with the same ``fn`` and ``kwargs`` into one call (so a
checkpoint of 64 records makes a few batches of ``batch_size`` rows instead of hundreds of batches of
3-6 rows) and sends each record its own slice back. One record driven alone is the per-record case,
so the metric logic exists once.

Merging changes which rows share a padded batch, never what a row computes: the teacher-forced
metrics pad with position ids rebuilt from the mask (:func:`editwrap.evals.metrics._forward`) and
generation cuts each row to its own budget (:func:`editwrap.evals.generation.generate_answers`).
"""
from __future__ import annotations

from typing import Any, Callable, Generator, Hashable, NamedTuple, Sequence

__all__ = ["Request", "RecordGen", "drive"]


class Request(NamedTuple):
    """``fn(model, tok, texts, *cols, **kwargs)``: one result per text (``cols`` run beside ``texts``)."""

    fn: Callable[..., list[Any]]
    texts: Sequence[str]
    cols: tuple[Sequence[Any], ...] = ()
    kwargs: dict[str, Any] = {}


RecordGen = Generator[list[Request], list[list[Any]], Any]
Runner = Callable[[Request], list[Any]]


def _key(req: Request) -> tuple[Hashable, ...]:
    """Requests merge when they call the same function with the same keyword arguments."""
    try:
        kw: Hashable = tuple(sorted(req.kwargs.items()))
        hash(kw)
    except TypeError:  # an unhashable setting: never merged
        kw = id(req)
    return (req.fn, len(req.cols), kw)


def drive(gens: Sequence[RecordGen], run: Runner) -> list[Any]:
    """Run record generators in lockstep; ``run(request)`` computes one merged request.
    Returns each generator's return value, in order."""
    out: list[Any] = [None] * len(gens)
    pending: dict[int, list[Request]] = {}

    def advance(i: int, value: list[list[Any]] | None) -> None:
        try:
            pending[i] = gens[i].send(value)
        except StopIteration as stop:
            out[i] = stop.value

    for i in range(len(gens)):
        advance(i, None)
    while pending:
        current, pending = pending, {}
        answers = {i: [[] for _ in reqs] for i, reqs in current.items()}
        groups: dict[tuple[Hashable, ...], list[tuple[int, int]]] = {}
        for i, reqs in current.items():
            for j, req in enumerate(reqs):
                if len(req.texts):
                    groups.setdefault(_key(req), []).append((i, j))
        for members in groups.values():
            first = current[members[0][0]][members[0][1]]
            reqs = [current[i][j] for i, j in members]
            texts = [t for r in reqs for t in r.texts]
            cols = tuple([v for r in reqs for v in r.cols[c]] for c in range(len(first.cols)))
            res = run(Request(first.fn, texts, cols, first.kwargs))
            if len(res) != len(texts):
                name = getattr(first.fn, "__name__", first.fn)
                raise RuntimeError(f"{name} gave {len(res)} results for {len(texts)} rows")
            at = 0
            for (i, j), r in zip(members, reqs):
                answers[i][j] = list(res[at:at + len(r.texts)])
                at += len(r.texts)
        for i in current:
            advance(i, answers[i])
    return out
