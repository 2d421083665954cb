"""Edit-record files -> :class:`~editwrap.facts.Fact`: the KnowEdit, MEND-zsRE and CounterFact formats,
mapped as EasyEdit maps them (``dataset/knowedit.py``, ``examples/run_knowedit_llama2.py``) so scores stay
comparable. The evaluation suite reads its datasets with these parsers (``editwrap.evals.datasets``, which
shares the underscored helpers), and methods that read training records at edit time (IKE's pool) use
:func:`read_fact_records`.

* an answer (``str``, ``[str]`` or ``[[alias, ...], ...]``) becomes its first string; probes with an
  empty answer are dropped, and so is a probe group left empty;
* portability/locality probes are keyed by the sub-metric name in the file (Reasoning,
  Subject_Aliasing, Logical_Generalization, Relation_Specificity, Forgetfulness); formats without
  names use EasyEdit's: ``neighborhood`` (MEND-zsRE ``loc``, CounterFact locality/neighborhood) and
  ``one_hop`` (``zsre_mend_eval_portability_gpt4.json``).

A malformed record raises :class:`DatasetError` naming file, record and field; with
``skip_malformed=True`` it is skipped and counted in ``LoadedDataset.skipped``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from .facts import Fact, Probe

__all__ = ["DatasetError", "LoadedDataset", "first_answer", "detect_format", "FACT_PARSERS", "read_fact_records"]


class DatasetError(ValueError):
    """A record cannot be read; the message names the file, the record index and the field."""

    def __init__(self, path: str | Path, index: int | str | None, field: str, problem: str):
        self.path, self.index, self.field, self.problem = str(path), index, field, problem
        where = f"{path}" if index is None else f"{path}: record {index}"
        super().__init__(f"{where}: field {field!r}: {problem}")


class _Bad(Exception):
    """Raised inside a record parser; the loop adds the file and the index."""

    def __init__(self, field: str, problem: str):
        super().__init__(field, problem)
        self.field, self.problem = field, problem


class LoadedDataset(list):
    """The loaded items (a plain list) plus what a caller should report.

    ``skipped``/``problems``: malformed records left out (only with ``skip_malformed=True``);
    ``locality``: dataset-level locality probes (Sanitation's retain set; empty otherwise).
    """

    def __init__(self, items: Any = (), *, name: str, path: str | Path):
        super().__init__(items)
        self.name, self.path = name, str(path)
        self.skipped = 0
        self.problems: list[str] = []
        self.locality: list[Probe] = []

    def summary(self) -> str:
        """One printable line, e.g. ``zsre: 98 records from ZsRE.json (2 malformed skipped)``."""
        extra = f" ({self.skipped} malformed skipped)" if self.skipped else ""
        return f"{self.name}: {len(self)} records from {self.path}{extra}"


def first_answer(value: Any) -> str | None:
    """Reduce ``str | [str] | [[str]]`` to its first string; None when empty (probe is skipped)."""
    while isinstance(value, list):
        if not value:
            return None
        value = value[0]
    if not isinstance(value, str):
        raise TypeError(f"expected a string or a list of strings, got {type(value).__name__}")
    return value if value.strip() else None


def _field(rec: Any, *keys: str, optional: bool = False) -> Any:
    """The first of ``keys`` present in the record (EasyEdit's ``prompt|text`` style aliases)."""
    if not isinstance(rec, dict):
        raise _Bad("<record>", f"expected a JSON object, got {type(rec).__name__}")
    for k in keys:
        if k in rec:
            return rec[k]
    if optional:
        return None
    raise _Bad("|".join(keys), "missing")


def _text(rec: Any, *keys: str, optional: bool = False) -> str | None:
    v = _field(rec, *keys, optional=optional)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v.strip():
        present = [k for k in keys if k in rec]  # _field already checked rec is a dict
        raise _Bad(present[0] if present else "|".join(keys), f"expected a non-empty string, got {v!r}")
    return v


def _answer(value: Any, field: str) -> str | None:
    try:
        return first_answer(value)
    except TypeError as e:
        raise _Bad(field, str(e)) from None


def _probe(prompt: Any, answer: Any, pfield: str, afield: str) -> Probe | None:
    ans = _answer(answer, afield)
    if ans is None:
        return None
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Bad(pfield, f"expected a non-empty string, got {prompt!r}")
    return Probe(prompt=prompt, answer=ans)


def _probe_groups(group: Any, field: str) -> dict[str, list[Probe]]:
    """``{key: [{prompt, ground_truth}, ...]}`` -> ``{key: [Probe]}``, empty answers dropped."""
    if group is None:
        return {}
    if not isinstance(group, dict):
        raise _Bad(field, f"expected an object of probe lists, got {type(group).__name__}")
    out: dict[str, list[Probe]] = {}
    for key, items in group.items():
        if not isinstance(items, list):
            raise _Bad(f"{field}.{key}", f"expected a list of probes, got {type(items).__name__}")
        probes = []
        for j, it in enumerate(items):
            if not isinstance(it, dict) or "prompt" not in it or "ground_truth" not in it:
                raise _Bad(f"{field}.{key}[{j}]", "expected an object with 'prompt' and 'ground_truth'")
            where = f"{field}.{key}[{j}]"
            p = _probe(it["prompt"], it["ground_truth"], where + ".prompt", where + ".ground_truth")
            if p is not None:
                probes.append(p)
        if probes:
            out[key] = probes
    return out


def _rephrases(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    vals = [value] if isinstance(value, str) else value
    if not isinstance(vals, list) or not all(isinstance(v, str) for v in vals):
        raise _Bad(field, f"expected a string or a list of strings, got {value!r}")
    return [v for v in vals if v.strip()]


def _fact(**kw: Any) -> Fact:
    try:
        return Fact(**kw)
    except ValidationError as e:
        err = e.errors()[0]
        raise _Bad(".".join(str(x) for x in err["loc"]) or "<fact>", err["msg"]) from None


# ---- record parsers: one JSON record -> one Fact ------------------------------------------------

def _parse_knowedit(rec: Any) -> Fact:
    """ZsRE / WikiData_recent / WikiData_counterfact / WikiBio (KnowEditDataset's field aliases)."""
    gt = _field(rec, "ground_truth", optional=True)
    return _fact(
        prompt=_text(rec, "prompt", "text"), target_new=_text(rec, "target_new", "labels"),
        subject=_text(rec, "subject", "concept", optional=True),
        ground_truth=None if gt is None else _answer(gt, "ground_truth"),
        rephrase=_rephrases(_field(rec, "rephrase_prompt", "rephrase", optional=True), "rephrase_prompt"),
        portability=_probe_groups(_field(rec, "portability", optional=True), "portability"),
        locality=_probe_groups(_field(rec, "locality", optional=True), "locality"),
    )


def _parse_zsre_mend(rec: Any) -> Fact:
    """MEND/ROME zsRE: src->prompt, alt->target_new, answers[0]->ground_truth (run_zsre_llama2.py)."""
    loc = _probe(_text(rec, "loc"), _field(rec, "loc_ans"), "loc", "loc_ans")
    port = _field(rec, "portability", optional=True)
    one_hop = None
    if isinstance(port, dict) and "New Question" in port:
        one_hop = _probe(port["New Question"], port.get("New Answer"), "portability.New Question",
                         "portability.New Answer")
    return _fact(
        prompt=_text(rec, "src"), target_new=_text(rec, "alt"), subject=_text(rec, "subject", optional=True),
        ground_truth=_answer(_field(rec, "answers", optional=True), "answers"),
        rephrase=_rephrases(_field(rec, "rephrase", optional=True), "rephrase"),
        locality={"neighborhood": [loc]} if loc else {},
        portability={"one_hop": [one_hop]} if one_hop else {},
    )


def _parse_counterfact_easyedit(rec: Any) -> Fact:
    """EasyEdit's flattened CounterFact (``counterfact-edit.json``)."""
    loc = _probe(_field(rec, "locality_prompt"), _field(rec, "locality_ground_truth"),
                 "locality_prompt", "locality_ground_truth")
    return _fact(
        prompt=_text(rec, "prompt"), target_new=_text(rec, "target_new"), subject=_text(rec, "subject"),
        ground_truth=_answer(_field(rec, "ground_truth", optional=True), "ground_truth"),
        rephrase=_rephrases(_field(rec, "rephrase_prompt", optional=True), "rephrase_prompt"),
        locality={"neighborhood": [loc]} if loc else {},
    )


def _parse_counterfact_rome(rec: Any) -> Fact:
    """ROME's ``requested_rewrite`` CounterFact; the prompt keeps its ``{}`` (see ``Fact.text_prompt``).

    Neighborhood prompts expect the *true* object (``target_true``); attribute/generation prompts
    are not KnowEdit metrics and are not loaded.
    """
    rw = _field(rec, "requested_rewrite")
    if isinstance(rw, list):  # multi_counterfact stores a list with one rewrite
        if len(rw) != 1:
            raise _Bad("requested_rewrite", f"expected one rewrite, got {len(rw)}")
        rw = rw[0]

    def text(path: tuple[str, ...], optional: bool = False) -> str | None:
        obj = rw
        try:
            for key in path[:-1]:
                obj = _field(obj, key, optional=optional)
            return None if obj is None else _text(obj, path[-1], optional=optional)
        except _Bad as e:
            raise _Bad(".".join(("requested_rewrite", *path[:-1], e.field)), e.problem) from None

    prompt, subject, new = text(("prompt",)), text(("subject",)), text(("target_new", "str"))
    true = text(("target_true", "str"), optional=True)
    neigh = _field(rec, "neighborhood_prompts", optional=True) or []
    if not isinstance(neigh, list):
        raise _Bad("neighborhood_prompts", "expected a list of strings")
    loc = [p for j, q in enumerate(neigh) if (p := _probe(q, true or "", f"neighborhood_prompts[{j}]", ""))]
    return _fact(prompt=prompt, subject=subject, target_new=new, ground_truth=true,
                 rephrase=_rephrases(_field(rec, "paraphrase_prompts", optional=True), "paraphrase_prompts"),
                 locality={"neighborhood": loc} if loc else {})


FACT_PARSERS: dict[str, Callable[[Any], Fact]] = {
    "recent": _parse_knowedit, "zsre": _parse_knowedit, "wikibio": _parse_knowedit,
    "counterfact": _parse_knowedit, "zsre_mend": _parse_zsre_mend,
    "counterfact_easyedit": _parse_counterfact_easyedit, "counterfact_rome": _parse_counterfact_rome,
}


def detect_format(data: Any) -> str:
    """Guess the dataset name from the JSON structure (keys of the first record)."""
    if isinstance(data, dict):
        if {"success", "locality"} <= data.keys() or {"K_F", "K_R"} <= data.keys():
            return "sanitation"
        raise ValueError(f"unknown JSON object with keys {sorted(data)[:8]}")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise ValueError("expected a non-empty JSON list of records")
    k = data[0].keys()
    for name, keys in (("counterfact_rome", {"requested_rewrite"}), ("zsre_mend", {"src", "alt"}),
                       ("convsent", {"ent", "pos", "neg"}), ("wikibio", {"text", "labels"}),
                       ("counterfact_easyedit", {"locality_prompt"}), ("zsre", {"rephrase_prompt", "cond"})):
        if keys <= k:
            return name
    if {"prompt", "target_new"} <= k:
        return "counterfact" if "ground_truth" in k else "recent"
    raise ValueError(f"cannot tell the format from the keys {sorted(k)}")


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(path, None, "<file>", f"cannot read JSON: {e}") from None


def _collect(out: LoadedDataset, rows: Any, parse: Callable[[Any], Any], n: int | None,
             skip: bool, label: str = "") -> list[Any]:
    """Parse ``rows`` into a list, turning a parser's complaint into a DatasetError or a skip."""
    if not isinstance(rows, list):
        raise DatasetError(out.path, None, label or "<file>", f"expected a JSON list, got {type(rows).__name__}")
    items: list[Any] = []
    for i, rec in enumerate(rows):
        if n is not None and len(items) >= n:
            break
        try:
            items.append(parse(rec))
        except _Bad as e:
            err = DatasetError(out.path, f"{label}[{i}]" if label else i, e.field, e.problem)
            if not skip:
                raise err from None
            out.skipped += 1
            out.problems.append(str(err))
    return items


def read_fact_records(path: str | Path, *, n: int | None = None, skip_malformed: bool = False) -> LoadedDataset:
    """The Facts of an edit-record file (JSON list or JSONL) in one of :data:`FACT_PARSERS`' formats,
    detected from its first record."""
    p = Path(path)
    data = _read(p)
    try:
        name = detect_format(data)
    except ValueError as e:
        raise DatasetError(p, None, "<file>", f"cannot detect the record format: {e}") from None
    if name not in FACT_PARSERS:
        raise DatasetError(p, None, "<file>", f"{name} records are not edit facts (formats: {', '.join(FACT_PARSERS)})")
    out = LoadedDataset(name=name, path=p)
    out.extend(_collect(out, data, FACT_PARSERS[name], n, skip_malformed))
    return out
