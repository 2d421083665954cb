"""KnowEdit (and older editing) datasets -> :class:`editwrap.facts.Fact`, mapped as EasyEdit maps them.

The fact formats (KnowEdit, MEND-zsRE, CounterFact) are parsed by :mod:`editwrap.records`; this
module adds the datasets that are not plain facts (ConvSent, Sanitation), dataset names and their
default file names. Use :func:`load_dataset`. A malformed record raises :class:`DatasetError` naming
file, record and field; with ``skip_malformed=True`` it is skipped and counted in
``LoadedDataset.skipped``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from editwrap.facts import Fact, Probe
from editwrap.records import (FACT_PARSERS, DatasetError, LoadedDataset, _Bad, _collect, _fact, _field, _probe,
                              _read, _text, _answer, detect_format, first_answer)

from editwrap.hub import CATALOG, find_local, resolve_data

__all__ = [
    "DATASETS", "DEFAULT_FILES", "CONVSENT_TEMPLATES", "SANITATION_TEMPLATE", "DatasetError",
    "LoadedDataset", "ConvSentRecord", "first_answer", "detect_format", "load_dataset",
    "select_answer", "folder_file",
]

DATASETS = ("recent", "zsre", "wikibio", "counterfact", "convsent", "sanitation", "zsre_mend",
            "counterfact_easyedit", "counterfact_rome")
# File names used when ``path`` is a directory (a flat local copy; docs/data.md).
DEFAULT_FILES = {
    "recent": "WikiData_recent.json", "zsre": "ZsRE.json", "wikibio": "WikiBio.json",
    "counterfact": "WikiData_counterfact.json", "convsent": "ConvSent.json",
    "sanitation": "Sanitation.json", "zsre_mend": "zsre_mend_eval.json",
    "counterfact_easyedit": "counterfact_easyedit.json", "counterfact_rome": "counterfact.json",
}
# EasyEdit examples/run_convsent_llama2.py: 3 questions + 10 "What is your <x> {}?" forms.
CONVSENT_TEMPLATES = (
    "What do you think of {}?", "What do you feel about {}?", "How do you view {}?",
    *("What is your " + p + " {}?" for p in (
        "opinion of", "stance on", "position on", "attitude about", "view on", "take on",
        "impression of", "assessment of", "judgment of", "sentiment of")),
)
# EasyEdit spells "postively"; kept so the edit prompts are the ones EasyEdit edits with.
_CONVSENT_EDIT = {"pos": "From the sentiment dataset, answer {} postively.",
                  "neg": "From the sentiment dataset, answer {} negatively."}
SANITATION_TEMPLATE = "Question:{}\nAnswer:"


class ConvSentRecord(BaseModel):
    """One ConvSent edit with the reply sets its success/locality metrics need.

    ``inner_questions[i]`` asks about ``ent`` for reply ``replies[i]`` (``pos`` then ``neg``);
    ``outer_*`` are the next record's entity and replies (EasyEdit's ``(idx + 1) % len`` choice),
    scored for KL locality.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    fact: Fact
    ent: str
    pos: list[str]
    neg: list[str]
    sentiment: Literal["pos", "neg"]
    question: str
    inner_questions: list[str]
    outer_ent: str
    outer_replies: list[str]
    outer_questions: list[str]

    @property
    def replies(self) -> list[str]:
        return [*self.pos, *self.neg]

    @property
    def is_target(self) -> list[bool]:
        """For each reply in :attr:`replies`: does it carry the edit's target sentiment?"""
        return [self.sentiment == "pos"] * len(self.pos) + [self.sentiment == "neg"] * len(self.neg)

    def inner_qa(self, sep: str = " </s> ") -> tuple[list[str], list[str], list[bool]]:
        """(contexts, replies, is_target) for ``metrics.token_logprobs``; EasyEdit joins with ' </s> '."""
        return [q + sep for q in self.inner_questions], self.replies, self.is_target

    def outer_qa(self, sep: str = " </s> ") -> tuple[list[str], list[str]]:
        """(contexts, replies) about the *other* entity, for KL locality."""
        return [q + sep for q in self.outer_questions], list(self.outer_replies)


def _parse_convsent(rec: Any) -> tuple[str, list[str], list[str]]:
    for key in ("pos", "neg"):
        v = _field(rec, key)
        if not isinstance(v, list) or not v or not all(isinstance(s, str) and s.strip() for s in v):
            raise _Bad(key, "expected a non-empty list of non-empty strings")
    return _text(rec, "ent"), rec["pos"], rec["neg"]


def _convsent_records(rows: list[tuple[str, list[str], list[str]]], seed: int) -> list[ConvSentRecord]:
    """Replays EasyEdit's ``format_consent_for_others`` RNG draws in the same order, so with seed 0
    on the same list of records it picks the same sentiments and question templates."""
    rng = random.Random(seed)
    out = []
    for i, (ent, pos, neg) in enumerate(rows):
        sentiment = "pos" if rng.choice([0, 1]) == 0 else "neg"
        prompt = _CONVSENT_EDIT[sentiment].format(rng.choice(CONVSENT_TEMPLATES).format(ent))
        o_ent, o_pos, o_neg = rows[(i + 1) % len(rows)]
        question = rng.choice(CONVSENT_TEMPLATES).format(ent)
        inner_q = [rng.choice(CONVSENT_TEMPLATES).format(ent) for _ in range(len(pos) + len(neg))]
        outer_q = [rng.choice(CONVSENT_TEMPLATES).format(o_ent) for _ in range(len(o_pos) + len(o_neg))]
        target = (pos if sentiment == "pos" else neg)[0].strip()
        out.append(ConvSentRecord(
            fact=Fact(prompt=prompt, target_new=target, subject=ent), ent=ent, pos=pos, neg=neg,
            sentiment=sentiment, question=question, inner_questions=inner_q, outer_ent=o_ent,
            outer_replies=[*o_pos, *o_neg], outer_questions=outer_q))
    return out


def _load_sanitation(out: LoadedDataset, data: Any, n: int | None, skip: bool, template: str) -> None:
    """Test file ``{success, locality}`` or train file ``{K_F, K_R}``: forget facts + retain probes."""
    if not isinstance(data, dict):
        raise DatasetError(out.path, None, "<file>", "expected a JSON object with success/locality or K_F/K_R")
    fkey, lkey = ("success", "locality") if "success" in data else ("K_F", "K_R")
    if fkey not in data:
        raise DatasetError(out.path, None, "success|K_F", "missing")

    def fact(rec: Any) -> Fact:
        return _fact(prompt=template.format(_text(rec, "question")),
                     target_new=_text(rec, "target_new", optional=True) or "I don't know.",
                     # No subject in the file: the question is the subject, so ROME/MEMIT read the key
                     # at its last token (where the answer is decided) instead of refusing the record.
                     subject=_text(rec, "subject", optional=True) or _text(rec, "question"),
                     ground_truth=_answer(_field(rec, "ground_truth", optional=True), "ground_truth"))

    def probe(rec: Any) -> Probe | None:
        q = _text(rec, "question")
        return _probe(template.format(q), _field(rec, "ground_truth"), "question", "ground_truth")

    out.extend(_collect(out, data[fkey], fact, n, skip, fkey))
    if lkey in data:
        out.locality = [p for p in _collect(out, data[lkey], probe, None, skip, lkey) if p is not None]


def folder_file(folder: str | Path, name: str) -> Path:
    """Dataset ``name``'s file in a local folder: :data:`DEFAULT_FILES` ``[name]``, else the same
    file in the Hub layout (``benchmark/ZsRE/ZsRE-test-all.json``); the flat path when neither is there."""
    flat = Path(folder) / DEFAULT_FILES[name]
    entry = next((f for f in CATALOG.values() if f.flat == DEFAULT_FILES[name]), None)
    return flat if flat.is_file() or entry is None else find_local(entry, folder) or flat


def load_dataset(name: str | None, path: str | Path, *, n: int | None = None,
                 skip_malformed: bool = False, seed: int = 0,
                 template: str = SANITATION_TEMPLATE) -> LoadedDataset:
    """Load ``path`` as dataset ``name`` (one of :data:`DATASETS`; None = detect from the JSON).

    Returns a :class:`LoadedDataset` (a list) of :class:`Fact`, except ``convsent`` which gives
    :class:`ConvSentRecord`; for ``sanitation`` the items are the forget facts (prompt
    ``template.format(question)``, target "I don't know.") and ``.locality`` holds the retain-set
    probes. ``n`` keeps the first ``n`` usable records (all retain probes are kept). ``seed`` drives
    ConvSent's sentiment/template draws (EasyEdit uses 0). A directory ``path`` is joined with
    :data:`DEFAULT_FILES` ``[name]`` (or that file's Hub layout path). ``path`` may also be a dataset
    name such as ``knowedit:ZsRE`` (:func:`editwrap.hub.resolve_data`).
    """
    if name is not None and name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    p = resolve_data(path)
    if p.is_dir():
        if name is None:
            raise ValueError("a directory path needs a dataset name")
        p = folder_file(p, name)
    data = _read(p)
    if name is None:
        try:
            name = detect_format(data)
        except ValueError as e:
            raise DatasetError(p, None, "<file>", f"cannot detect the dataset format: {e}") from None
    out = LoadedDataset(name=name, path=p)
    if name == "sanitation":
        _load_sanitation(out, data, n, skip_malformed, template)
    elif name == "convsent":
        out.extend(_convsent_records(_collect(out, data, _parse_convsent, n, skip_malformed), seed))
    else:
        out.extend(_collect(out, data, FACT_PARSERS[name], n, skip_malformed))
    return out


def select_answer(facts: list[Fact], answer: str) -> list[Fact]:
    """Sanitation's ``--specify_answer``: the forget facts whose true answer is ``answer`` ("all" = all)."""
    if answer.lower() == "all":
        return list(facts)
    return [f for f in facts if (f.ground_truth or "").lower() == answer.lower()]
