"""Batched, streamable generation for ``editwrap serve``.

Completion rows (one per prompt) wait in a queue; one worker thread takes the first, waits up to
``batch_window_ms`` for others, and answers up to ``max_batch`` of them with one
``generate_text(..., edit_sets=[...])`` call: every row keeps its own edit sets (side-cars are
gated row by row in the same forward pass), its own ``max_tokens`` and stop strings. A per-row
stopping rule watches each new token: a row that reached its end stops being extended while the
others go on, and a streaming row hands out its new text at every step.

Greedy rows are batched together; a sampled row (``temperature > 0``) runs alone so that its
``seed`` means what it means for a single request. The worker holds the stack's read lock for a
batch, so an edit is pushed between batches, never during one.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

__all__ = ["Row", "Sampling", "RowResult", "Batcher"]


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    seed: int | None


@dataclass(frozen=True)
class RowResult:
    text: str
    finish_reason: str  # "stop" (end of text or a stop string) or "length"
    completion_tokens: int


class Row:
    """One prompt of one request. ``on_text(delta)`` (streaming) and ``on_done(RowResult |
    exception)`` are called from the worker thread."""

    def __init__(self, prompt: str, sets: list[str] | None, max_tokens: int, stops: list[str],
                 sampling: Sampling | None, on_done: Callable[[Any], None],
                 on_text: Callable[[str], None] | None = None) -> None:
        self.prompt, self.sets, self.max_tokens = prompt, sets, max_tokens
        self.stops = [s for s in stops if s]
        self.sampling, self.on_done, self.on_text = sampling, on_done, on_text
        self.arrived = time.monotonic()
        self.cancelled = False  # set by the request's handler when its client has gone
        self.ids: list[int] = []
        self.finish: str | None = None
        self._cut: int | None = None  # where the first stop string starts in the decoded text
        self._sent = ""
        self._reported = False

    def report(self, result: Any) -> None:
        """Hand the result (or the exception) to the request, once."""
        if not self._reported:
            self._reported = True
            self.on_done(result)

    @staticmethod
    def _decode(tok: Any, ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _first_stop(self, text: str) -> int | None:
        return min((text.index(s) for s in self.stops if s in text), default=None)

    def step(self, token: int, tok: Any, eos: set[int]) -> None:
        """Take the row's next generated token (ignored once the row has ended)."""
        if self.finish is not None:
            return
        self.ids.append(token)
        if token in eos:
            self.finish = "stop"
        elif len(self.ids) >= self.max_tokens:
            self.finish = "length"
        if self.cancelled:
            self.finish = self.finish or "stop"
        if not (self.stops or self.on_text):
            return
        text = self._decode(tok, self.ids)
        cut = self._first_stop(text)
        if cut is not None:
            self._cut, self.finish = cut, "stop"
            return
        if self.on_text is not None and self.finish is None:
            hold = max((len(s) - 1 for s in self.stops), default=0)  # a stop string may be starting
            safe = text[:len(text) - hold] if hold else text
            self._emit(safe.rstrip("\ufffd"))  # an unfinished multi-byte character waits for its next token

    def _emit(self, upto: str) -> None:
        if len(upto) > len(self._sent) and upto.startswith(self._sent):
            self.on_text(upto[len(self._sent):])  # type: ignore[misc]
            self._sent = upto

    def close(self, tok: Any) -> None:
        """After generation: the final text (cut at the first stop string), the rest of the stream."""
        text = self._decode(tok, self.ids)
        cut = self._cut if self._cut is not None else self._first_stop(text)
        if cut is not None:
            text = text[:cut]
        if self.on_text is not None:
            self._emit(text)
        self.report(RowResult(text, "stop" if cut is not None else (self.finish or "length"), len(self.ids)))


class _RowStop(StoppingCriteria):
    """Feeds each step's tokens to the rows of one generate call; a finished row stops there."""

    def __init__(self, rows: list[Row], tok: Any, eos: set[int]) -> None:
        self.rows, self.tok, self.eos = rows, tok, eos

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for r, t in zip(self.rows, input_ids[:, -1].tolist()):
            r.step(t, self.tok, self.eos)
        return torch.tensor([r.finish is not None for r in self.rows], device=input_ids.device)


class Batcher:
    """The generation worker: a queue of rows, answered in batches by one thread."""

    def __init__(self, model: Any, lock: Any, window_s: float, max_batch: int, max_queued: int) -> None:
        self.model, self.lock = model, lock
        self.window, self.max_batch = window_s, max_batch
        self._q: queue.Queue[Row] = queue.Queue(maxsize=max_queued)
        self._later: collections.deque[Row] = collections.deque()  # sampled rows met while gathering a batch
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = eos if eos is not None else model.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.stats = {"batches": 0, "rows": 0, "largest_batch": 0}
        threading.Thread(target=self._run, name="editwrap-generate", daemon=True).start()

    def submit(self, row: Row) -> None:
        """Queue a row; ``queue.Full`` when ``max_queued_requests`` rows already wait."""
        self._q.put_nowait(row)

    def _gather(self) -> list[Row]:
        first = self._later.popleft() if self._later else self._q.get()
        batch = [first]
        if first.sampling is not None:
            return batch
        deadline = first.arrived + self.window
        while len(batch) < self.max_batch:
            try:
                r = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            (batch if r.sampling is None else self._later).append(r)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._gather()
            try:
                self._generate(batch)
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error
                for r in batch:
                    r.report(exc)

    def _generate(self, batch: list[Row]) -> None:
        model, tok = self.model, self.model.tokenizer
        kw: dict[str, Any] = {}
        s = batch[0].sampling
        if s is not None:
            if s.seed is not None:
                torch.manual_seed(s.seed)
            kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)

        def per_call(idx: list[int]) -> dict[str, Any]:
            return {"stopping_criteria": StoppingCriteriaList([_RowStop([batch[i] for i in idx], tok, self.eos)])}

        with self.lock.read():
            present = set(model.edit_sets)  # a set whose last edit was popped selects nothing
            rows = [sorted(present if r.sets is None else present & set(r.sets)) for r in batch]
            model.generate_text([r.prompt for r in batch], max(r.max_tokens for r in batch), edit_sets=rows,
                                per_call=per_call, **kw)
        self.stats["batches"] += 1
        self.stats["rows"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        for r in batch:
            r.close(tok)
