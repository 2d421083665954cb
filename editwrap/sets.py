"""Edit sets: stack entries tagged with a name, applied only where that name is selected.

Several customers can share one wrapped model without seeing each other's edits, and without any
weight being copied. An edit pushed with ``edit_set="tenant-a"`` applies only when the caller
selects that set; edits without a set (the default) apply always.

* ``with model.using("tenant-a", "tenant-b"):`` selects sets for everything run inside the block
  (forward, ``generate``, ``generate_text``, scoring). ``model.using()`` selects none: only the
  untagged edits apply.
* ``model.generate(..., edit_sets=[["a"], ["b"], []])`` / ``model.generate_text(prompts,
  edit_sets=[...])`` select per batch row: side-car factors (ROME, MEMIT, AlphaEdit, FT, KN, LoRA,
  AdaLoRA, …) are gated row by row inside the same forward pass; text-plane entries (IKE, SERAC)
  are chosen per prompt.
* Outside any selection every edit applies, as before sets existed.

The selection lives in :mod:`contextvars`, so concurrent threads (a server's request handlers)
each see their own. Activation-plane entries (GRACE, WISE, MELO, T-Patcher) share one state per
module across edits (a codebook, a side memory) and cannot be gated per set: they must stay
untagged (:func:`check_taggable`).
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

__all__ = ["selecting", "gate", "row_mask_for", "select_call", "select_rows", "check_name", "check_taggable",
           "active"]

#: sets selected for the whole call (None: no selection, every edit applies)
_CALL: ContextVar[frozenset[str] | None] = ContextVar("editwrap_call_sets", default=None)
#: sets selected per batch row (None: no per-row selection)
_ROWS: ContextVar[tuple[frozenset[str], ...] | None] = ContextVar("editwrap_row_sets", default=None)


def selecting() -> bool:
    """Whether any selection is in effect (if not, every edit applies and hooks take the fast path)."""
    return _CALL.get() is not None or _ROWS.get() is not None


def active(edit_set: str | None) -> bool:
    """Whether an edit of ``edit_set`` applies to the whole current call (per-row selections:
    whether it applies to any row)."""
    if edit_set is None:
        return True
    rows, call = _ROWS.get(), _CALL.get()
    if rows is not None:
        return any(edit_set in r for r in rows)
    return call is None or edit_set in call


def gate(edit_set: str | None, batch: int) -> bool | torch.Tensor:
    """``True`` (apply to every row), ``False`` (to none) or a bool mask ``[batch]``."""
    if edit_set is None:
        return True
    rows = _ROWS.get()
    if rows is not None:
        if len(rows) != batch:
            raise ValueError(f"edit_sets names {len(rows)} rows but the forward pass has {batch}; pass one list of "
                             "set names per prompt (generation with num_return_sequences or beams is not supported)")
        hit = [edit_set in r for r in rows]
        return True if all(hit) else (False if not any(hit) else torch.tensor(hit))
    call = _CALL.get()
    return call is None or edit_set in call


def row_mask_for(edit_set: str | None, x: torch.Tensor) -> bool | torch.Tensor:
    """:func:`gate` for an activation ``x`` (``[batch, ...]``), as a mask broadcastable to it."""
    g = gate(edit_set, x.shape[0] if x.dim() > 1 else 1)
    if isinstance(g, bool):
        return g
    return g.to(x.device).view(-1, *([1] * (x.dim() - 1)))


def _names(sets: Iterable[str] | str) -> frozenset[str]:
    if isinstance(sets, str):
        return frozenset([sets])
    return frozenset(sets)


def validate(known: set[str], sets: Iterable[str]) -> None:
    bad = sorted(set(sets) - known)
    if bad:
        raise ValueError(f"unknown edit set(s) {bad}: no edit on the stack belongs to them; known sets: "
                         f"{sorted(known) or 'none'} (push an edit with model.edit(..., edit_set=NAME) first)")


@contextlib.contextmanager
def select_call(sets: Iterable[str]) -> Iterator[None]:
    token = _CALL.set(_names(sets))
    try:
        yield
    finally:
        _CALL.reset(token)


@contextlib.contextmanager
def select_rows(rows: Sequence[Iterable[str] | str]) -> Iterator[None]:
    token = _ROWS.set(tuple(_names(r) for r in rows))
    try:
        yield
    finally:
        _ROWS.reset(token)


def check_name(edit_set: Any) -> None:
    if edit_set is not None and (not isinstance(edit_set, str) or not edit_set.strip()):
        raise ValueError(f"edit_set must be a non-empty string or None, got {edit_set!r}")


def check_taggable(entry: Any, edit_set: str | None) -> None:
    """Only entries that can be gated per set may carry one."""
    check_name(edit_set)
    if edit_set is None:
        return
    if getattr(entry, "plane", "weights") == "activations":
        raise ValueError(f"edit_set={edit_set!r}: {entry.kind} entries share one state per module across edits and "
                         "cannot be limited to a set; push them without edit_set (they then apply to every set), or "
                         "use a side-car method (rome, memit, alphaedit, ft-m, lora, ...) or ike/serac for per-set "
                         "edits")
