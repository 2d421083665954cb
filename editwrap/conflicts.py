"""Conflicting facts: a new fact about the same subject and relation as one already on the stack.

Two facts conflict when they fill the same *slot*: the same ``(subject, relation)`` when both name a
relation, otherwise the same prompt up to case and whitespace (a ``{}`` template is filled with its
subject first). ``model.edit(..., on_conflict=...)`` then applies a policy:

* ``"replace"`` (default) — the edits holding the old facts are taken off the stack first, so the
  new edit is computed on a model that no longer says the old answer; the edits above them are put
  back in their order (their deltas stay exact; like ``remove()``, they were computed with the old
  edit present). A failed computation puts everything back bit for bit. An edit that holds other
  facts besides the conflicting ones cannot be taken apart here: the call fails and names it.
* ``"refuse"`` — nothing changes; :class:`~editwrap.stack.StackError` names the conflicting edit.
* ``"stack"`` — the new edit goes on top of the old one (the later edit usually wins).

The returned Edit reports what happened in ``edit.info["conflicts"]``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from .facts import Fact
from .errors import StackError

if TYPE_CHECKING:
    from .model import EditableModel
    from .stack import Edit

__all__ = ["POLICIES", "fact_slot", "find_conflicts", "edit_with_policy"]

POLICIES = ("replace", "refuse", "stack")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def fact_slot(f: Fact) -> tuple[str, ...]:
    """What a fact is about: ``("relation", subject, relation)`` or ``("prompt", prompt)``, normalised."""
    if f.relation and f.subject:
        return ("relation", _norm(f.subject), _norm(f.relation))
    return ("prompt", _norm(f.text_prompt))


def find_conflicts(edits: Sequence[Edit], facts: Sequence[Fact]) -> list[tuple[Fact, Edit, Fact]]:
    """``(new fact, edit on the stack, old fact)`` for every new fact whose slot is already filled."""
    slots = {fact_slot(f): f for f in facts}
    return [(slots[fact_slot(old)], e, old) for e in edits for old in e.facts if fact_slot(old) in slots]


def _take_out(host: "EditableModel", gone: Sequence[Edit]) -> Callable[[], None]:
    """Take ``gone`` off the stack (the edits above the lowest of them are put back in order);
    return an undo that restores the exact stack: the same edits, attached again in the same order."""
    original = host.stack.edits
    host.restack([e for e in original if e not in gone])
    return lambda: host.restack(original)


def edit_with_policy(host: "EditableModel", facts: list[Fact], compute: Callable[[], Edit], policy: str,
                     edit_set: str | None = None) -> Edit:
    """Push ``compute()`` under the conflict ``policy``; see the module docstring. Only edits of the
    same edit set conflict (two tenants may hold different answers to one question)."""
    if policy not in POLICIES:
        raise ValueError(f"on_conflict must be one of {', '.join(POLICIES)}, got {policy!r}")
    slots = [fact_slot(f) for f in facts]
    if policy != "stack" and len(set(slots)) < len(slots):
        twice = next(f.text_prompt for f, s in zip(facts, slots) if slots.count(s) > 1)
        raise StackError(f"two facts of this edit fill the same slot ({twice!r}); edit them separately or pass "
                         "on_conflict='stack'")
    found = find_conflicts([e for e in host.stack if e.edit_set == edit_set], facts)
    report: dict[str, Any] = {"policy": policy, "with": [
        {"edit": e.id, "method": e.method, "prompt": old.text_prompt, "target_new": old.target_new,
         "new_target": new.target_new} for new, e, old in found]}
    if found and policy == "refuse":
        new, e, old = found[0]
        raise StackError(f"fact {new.text_prompt!r} -> {new.target_new!r} conflicts with edit {e.id} ({e.method}: "
                         f"{old.text_prompt!r} -> {old.target_new!r}); pop or retract it, or pass "
                         "on_conflict='replace' or 'stack'")
    undo: Callable[[], None] | None = None
    if found and policy == "replace":
        if host.is_merged:
            raise StackError("the stack is merged into the weights; call model.unmerge() before editing")
        holders = list(dict.fromkeys(e for _, e, _ in found))
        for e in holders:
            mine = {id(old) for _, h, old in found if h is e}
            if len(mine) < len(e.facts):
                raise StackError(f"edit {e.id} ({e.method}) holds {len(e.facts)} facts and only {len(mine)} conflict; "
                                 "it cannot be replaced in part: retract the old fact (model.stack.retract) or pass "
                                 "on_conflict='stack'")
        undo = _take_out(host, holders)
    try:
        edit = host.push(compute())
    except BaseException:
        if undo is not None:
            undo()
        raise
    if found:
        edit.info["conflicts"] = report
    return edit
