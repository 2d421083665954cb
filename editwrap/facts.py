"""The user-facing description of one piece of knowledge to write into a model.

A :class:`Fact` is plain data (pydantic), so it validates on construction, serialises to JSON for
saved stacks and can be built by hand, from JSON/JSONL, or by the KnowEdit loaders in
``editwrap.evals``. Checks that need a tokenizer or a method (subject present, fits the context)
live in :func:`check_facts`, which every edit calls *before* touching the model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Probe", "Fact", "FactError", "check_facts", "load_facts"]


class FactError(ValueError):
    """A fact cannot be used as given; the message names the field and the fix."""


class Probe(BaseModel):
    """One evaluation question: a prompt and the answer expected after (or unchanged by) the edit."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str
    answer: str

    @field_validator("prompt", "answer")
    @classmethod
    def _non_empty(cls, v: str, info: Any) -> str:
        if not v.strip():
            raise ValueError(f"Probe.{info.field_name} is empty; give a non-empty string")
        return v.strip() if info.field_name == "answer" else v


class Fact(BaseModel):
    """A requested edit: after editing, ``prompt`` should be continued by ``target_new``.

    ``subject`` is the entity whose representation locate-then-edit methods (ROME, MEMIT) change;
    it must occur in ``prompt`` for those methods. ``rephrase``, ``locality`` and ``portability``
    are evaluation probes only; no method trains on them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str
    target_new: str
    subject: str | None = None
    #: what the prompt asks about the subject (a Wikidata id such as "P36" or a name): with
    #: ``subject`` it identifies the fact's slot for conflict checks (editwrap.conflicts)
    relation: str | None = None
    ground_truth: str | None = None
    rephrase: list[str] = Field(default_factory=list)
    locality: dict[str, list[Probe]] = Field(default_factory=dict)
    portability: dict[str, list[Probe]] = Field(default_factory=dict)

    @field_validator("prompt", "target_new")
    @classmethod
    def _required_text(cls, v: str, info: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"Fact.{info.field_name} is empty; give the text of the {info.field_name}")
        # Targets are joined to prompts with one space (EasyEdit's ``prompt + ' ' + target``); a
        # target stored with its own leading space (" Paris", CounterFact style, or a few ZsRE
        # records) would otherwise be scored after a double space it was never trained on.
        return v.strip() if info.field_name == "target_new" else v

    @field_validator("subject")
    @classmethod
    def _subject_text(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("Fact.subject is empty; give the entity as it appears in the prompt, or None")
        return v

    @model_validator(mode="after")
    def _target_not_in_prompt_braces(self) -> "Fact":
        if "{}" in self.prompt and self.subject is None:
            raise ValueError("Fact.prompt has a '{}' placeholder but no subject; set subject=...")
        return self

    @property
    def text_prompt(self) -> str:
        """The prompt with a ``{}`` placeholder (CounterFact style) filled with the subject."""
        return self.prompt.replace("{}", self.subject) if "{}" in self.prompt and self.subject else self.prompt

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def check_facts(
    facts: Sequence[Fact],
    *,
    tokenizer: Any = None,
    method: str = "",
    needs_subject: bool = False,
    max_length: int | None = None,
) -> None:
    """Raise :class:`FactError` for the first fact a method cannot use; never touches the model."""
    if isinstance(facts, Fact):  # pragma: no cover - callers normalise, but be forgiving
        facts = [facts]
    if not facts:
        raise FactError("no facts given; pass a Fact or a non-empty list of Facts")
    for i, f in enumerate(facts):
        if not isinstance(f, Fact):
            raise FactError(
                f"facts[{i}] is a {type(f).__name__}, not a Fact; build it with editwrap.Fact(prompt=..., "
                f"target_new=...)"
            )
        if needs_subject:
            if f.subject is None:
                raise FactError(f"facts[{i}].subject is missing; method '{method}' needs the subject to locate the "
                                f"edit")
            if f.subject not in f.text_prompt:
                raise FactError(
                    f"facts[{i}].subject {f.subject!r} does not occur in the prompt {f.text_prompt!r}; "
                    f"method '{method}' edits the subject's last token, so the subject must appear verbatim"
                )
        if tokenizer is not None and max_length is not None:
            n = len(tokenizer(f.text_prompt + " " + f.target_new.strip())["input_ids"])
            if n > max_length:
                raise FactError(
                    f"facts[{i}] is {n} tokens (prompt + target) but the model accepts {max_length}; shorten "
                    f"prompt/target_new"
                )


def load_facts(path: str | Path) -> list[Fact]:
    """Read Facts from a JSON list or a JSONL file (one Fact object per line)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    rows: Iterable[Any]
    if p.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
    out = []
    for i, r in enumerate(rows):
        try:
            out.append(Fact.model_validate(r))
        except Exception as e:  # pydantic's message already names the field
            raise FactError(f"{p}: record {i}: {e}") from e
    return out
