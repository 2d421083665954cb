"""The half of :class:`~editwrap.model.EditableModel` that reads text: edit sets, routing, greedy
generation and log-likelihoods.

Kept apart from the stack mechanics (push/pop/merge) because these methods only *read* the stack:
they decide which edits a call sees (edit sets, scoped routing, text-plane rewrites) and run it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import torch

from . import sets as _sets
from .ops.scope import route_as
from .stack import Edit, StackError

__all__ = ["TextAndSets"]


class TextAndSets:
    """Mixin: expects the host to provide ``_edits``, ``_merged`` and ``tokenizer`` (EditableModel does)."""

    _edits: list[Edit]
    _merged: Any
    tokenizer: Any

    # ---------------------------------------------------------------- text helpers
    def _prepare_text(self, text: str) -> str:
        """Text-plane entries (in-context prompts, retrieval caches) rewrite inputs here."""
        for e in self._active_edits():
            rewrite = getattr(e.entry, "rewrite_text", None)
            if rewrite is not None:
                text = rewrite(self, text)
        return text

    # ---------------------------------------------------------------- edit sets
    @property
    def edit_sets(self) -> list[str]:
        """Names of the edit sets on the stack."""
        return sorted({e.edit_set for e in self._edits if e.edit_set is not None})

    def using(self, *names: str) -> Any:
        """Select edit sets for everything run inside the ``with`` block (this thread only):
        untagged edits and those of ``names`` apply; ``using()`` leaves only the untagged ones."""
        _sets.validate(set(self.edit_sets), names)
        self._no_merged_sets()
        return _sets.select_call(names)

    def using_rows(self, edit_sets: Sequence[Sequence[str]]) -> Any:
        """Select edit sets per batch row (one list of names per row) for forward passes inside
        the ``with`` block; side-car edits are gated row by row in the same pass."""
        rows = self._row_sets(edit_sets, None)
        assert rows is not None
        return _sets.select_rows(rows)

    def generate(self, *args: Any, edit_sets: Sequence[Sequence[str]] | None = None, **kwargs: Any) -> Any:
        """transformers' ``generate``; ``edit_sets`` selects the edit sets of each batch row."""
        rows = self._row_sets(edit_sets, None)
        if rows is None:
            return super().generate(*args, **kwargs)
        with _sets.select_rows(rows):
            return super().generate(*args, **kwargs)

    def _row_sets(self, edit_sets: Sequence[Sequence[str]] | None, n: int | None) -> list[list[str]] | None:
        if edit_sets is None:
            return None
        rows = [[r] if isinstance(r, str) else list(r) for r in edit_sets]
        if n is not None and len(rows) != n:
            raise ValueError(f"edit_sets has {len(rows)} entries for {n} prompts; give one list of set names per "
                             f"prompt")
        _sets.validate(set(self.edit_sets), [name for r in rows for name in r])
        self._no_merged_sets()
        return rows

    def _no_merged_sets(self) -> None:
        if self._merged is not None and self.edit_sets:
            raise StackError("the stack is merged into the weights, so edit sets cannot be selected; call "
                             "model.unmerge() first")

    def _active_edits(self) -> list[Edit]:
        """The edits the current selection applies (all of them outside any selection)."""
        if not _sets.selecting():
            return self._edits
        return [e for e in self._edits if _sets.active(e.edit_set)]

    def _route(self, text: str) -> tuple[str, Any]:
        """(text, model to run it on): the first entry, top of the stack first, whose
        ``route_text(host, text)`` routes the input (e.g. a SERAC cache sending in-scope inputs to its
        counterfactual model); otherwise ``(self._prepare_text(text), self)``."""
        for e in reversed(self._active_edits()):
            route = getattr(e.entry, "route_text", None)
            if route is not None:
                got = route(self, text)
                if got is not None:
                    return got
        return self._prepare_text(text), self

    @torch.no_grad()
    def generate_text(self, prompt: str | list[str], max_new_tokens: int = 20, *,
                      edit_sets: Sequence[Sequence[str]] | None = None,
                      per_call: Callable[[list[int]], dict[str, Any]] | None = None, **kwargs: Any) -> str | list[str]:
        """Greedy continuation of ``prompt`` (only the new text), honouring text-plane entries.
        ``edit_sets``: the edit sets each prompt sees (one list of names per prompt).
        ``per_call(indices)``: extra ``generate`` keywords for the call that serves those prompts
        (prompts routed to different models run in separate calls), e.g. a per-row stopping rule."""
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        tok = self.tokenizer
        rows = self._row_sets(edit_sets, len(prompts))
        if rows is None:
            routed = [self._route(p) for p in prompts]
        else:
            routed = []
            for p, r in zip(prompts, rows):
                with _sets.select_call(r):
                    routed.append(self._route(p))
        groups: dict[int, list[int]] = {}  # one batch per model the inputs are routed to
        for i, (_, m) in enumerate(routed):
            groups.setdefault(id(m), []).append(i)
        kwargs.setdefault("do_sample", False)
        texts: list[str] = [""] * len(prompts)
        for idx in groups.values():
            m = routed[idx[0]][1]
            # left padding for this call only (never set on the shared tokenizer: threads share it)
            enc = tok([routed[i][0] for i in idx], return_tensors="pt", padding=True, padding_side="left").to(m.device)
            rows_here = _sets.select_rows([rows[i] for i in idx]) if rows is not None and m is self \
                else contextlib.nullcontext()
            with rows_here:
                extra = per_call(idx) if per_call is not None else {}
                out = m.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **kwargs, **extra)
            for i, t in zip(idx, tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)):
                texts[i] = t
        return texts[0] if single else texts

    @torch.no_grad()
    def loglikelihood(self, context: str, continuation: str) -> float:
        """Sum of log-probabilities of ``continuation`` after ``context`` (text-plane entries honoured)."""
        tok = self.tokenizer
        text, m = self._route(context)
        ctx = tok(text)["input_ids"]
        cont = tok(continuation)["input_ids"] if continuation else []
        if not cont:
            return 0.0
        ids = torch.tensor([ctx + cont], device=m.device)
        with route_as([text]):  # scoped edits route on the context, as generation does
            logits = m(input_ids=ids).logits
        logp = torch.log_softmax(logits[0, len(ctx) - 1:-1].float(), -1)
        return float(logp.gather(1, ids[0, len(ctx):, None]).sum())

