"""In-context prompt entries (IKE / ICE): new facts + demonstrations prepended to text inputs.

A :class:`PromptEntry` acts on the *text plane* only: ``EditableModel.generate_text`` and
``EditableModel.loglikelihood`` pass every input through ``rewrite_text``; a raw
``model(input_ids)`` / ``model.generate(input_ids)`` call never sees it (there is no text to
rewrite). Scoring code that wants the edit must format its prompts with
``model._prepare_text(prompt)`` (or use the text helpers).

Several prompt entries on one stack compose into *one* context: the top-most prompt entry writes
all demonstrations (bottom entry first), then one ``New Fact:`` line per fact, then
``Prompt: <text>`` (EasyEdit's IKE query format). Lower prompt entries leave the text alone, so
pushing and popping prompt entries in any order is exact: nothing is stored on the model.

A context that would not fit the model's window raises :class:`ContextOverflowError` (never a
silent truncation), both when the edit is computed and whenever a text is rewritten.
"""
from __future__ import annotations

from typing import Any, Sequence

from .base import Entry, register_entry

__all__ = ["PromptEntry", "ContextOverflowError", "format_context", "QUERY_PREFIX"]

QUERY_PREFIX = "Prompt: "


class ContextOverflowError(ValueError):
    """An in-context prompt does not fit the model's context window; the message gives the sizes."""


def format_context(demos: Sequence[str], new_facts: Sequence[str], text: str) -> str:
    return "".join(demos) + "".join(f"New Fact: {f}\n" for f in new_facts) + QUERY_PREFIX + text


def check_fits(host: Any, context: str, extra_tokens: int = 0, what: str = "the in-context prompt") -> int:
    """Token count of ``context``; raise ContextOverflowError if it (+extra) exceeds the window."""
    n = len(host.tokenizer(context)["input_ids"])
    limit = int(host.max_length)
    if n + extra_tokens > limit:
        raise ContextOverflowError(
            f"{what} is {n} tokens (+{extra_tokens} for the answer) but the model's context window is {limit} "
            f"tokens; use fewer demonstrations (hparam k), shorter facts, or fewer prompt edits on the stack. "
            "editwrap never truncates in-context prompts silently")
    return n


@register_entry
class PromptEntry(Entry):
    """Facts ``"<prompt> <target>"`` and demonstration texts (each ending with a blank line)."""

    kind = "prompt"
    plane = "text"
    removable_anywhere = True

    def __init__(self, new_facts: Sequence[str], demos: Sequence[str] = ()) -> None:
        if not new_facts:
            raise ValueError("a prompt entry needs at least one new fact")
        self.new_facts = [str(f) for f in new_facts]
        self.demos = [str(d) for d in demos]

    # nothing is installed on the model: the text helpers ask the stack for rewrite_text
    def attach(self, host: Any, key: str) -> None:
        check_fits(host, format_context(self.demos, self.new_facts, ""), what="this prompt edit's context")

    def detach(self, host: Any, key: str) -> None:
        return None

    def rewrite_text(self, host: Any, text: str) -> str:
        entries = [e.entry for e in host._active_edits() if isinstance(e.entry, PromptEntry)]
        if not entries or entries[-1] is not self:
            return text  # the top-most prompt entry writes the whole context
        demos = [d for e in entries for d in e.demos]
        facts = [f for e in entries for f in e.new_facts]
        out = format_context(demos, facts, text)
        check_fits(host, out, what=f"the in-context prompt ({len(demos)} demonstrations, {len(facts)} facts)")
        return out

    def meta(self) -> dict[str, Any]:
        return {"new_facts": self.new_facts, "demos": self.demos}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, Any]) -> "PromptEntry":
        return cls(meta["new_facts"], meta.get("demos", []))

    def nbytes(self) -> int:
        return sum(len(s.encode("utf-8")) for s in (*self.new_facts, *self.demos))

    def summary(self) -> str:
        return f"prompt ({len(self.new_facts)} fact(s), {len(self.demos)} demonstrations; text plane only)"
