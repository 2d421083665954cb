"""Which edits an export carries, and the weight delta each one puts on each module.

Every export (PEFT adapter, merged checkpoint, GGUF) starts here, so all three pick edits the same
way, following the edit-set semantics of :mod:`editwrap.sets`:

* ``edit_set=None``: every edit on the stack (what the model does outside any selection);
* ``edit_set="a"`` (or a list of names): the untagged edits plus those of the named sets, i.e.
  exactly what ``model.using("a")`` applies; ``include_untagged=False`` keeps the named sets' own
  edits only (to serve on a base that already has the untagged edits folded in);
* ``edit_set=()``: the untagged edits only (``model.using()``).

Only side-car weight deltas (:class:`~editwrap.entries.delta.DeltaEntry`: ROME, MEMIT, AlphaEdit,
PMET, UltraEdit, FT-L/FT-M, KN, MEND, LoRA, AdaLoRA) are a change of weights; the others act on
activations or on the input text and have no weight-space form, so they are refused by name
(or, with ``skip_unsupported=True``, left out and listed in the export note).
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import sets as _sets
from ..entries.delta import DeltaEntry, is_conv1d

if TYPE_CHECKING:
    from ..stack import Edit

__all__ = ["ExportError", "Selection", "select_edits", "module_parts", "dense_delta", "export_note"]

_WHY = {
    "activations": "acts on hidden activations through module hooks (a codebook, a side memory or routed "
                   "neurons that fire only near the edited inputs), which no weight matrix reproduces",
    "text": "acts on the input text (an in-context prompt or a retrieval router), not on weights",
}


def _why(e: Any) -> str:
    """Why an entry is not exported as weights: its own reason, else its plane's."""
    return getattr(e.entry, "not_exportable", None) or _WHY.get(e.entry.plane, "not a weight delta")


class ExportError(ValueError):
    """The stack cannot be exported as asked; the message names the edits or modules and the fix."""


@dataclass
class Selection:
    """The edits an export carries (stack order) and the ones it left out (with the reason)."""

    edits: list[Edit]
    skipped: list[tuple[Edit, str]] = field(default_factory=list)
    edit_set: Any = None
    include_untagged: bool = True


def _wanted(e: Edit, names: frozenset[str] | None, include_untagged: bool) -> bool:
    if names is None:
        return True
    return e.edit_set in names if e.edit_set is not None else include_untagged


def select_edits(model: Any, edit_set: str | Sequence[str] | None = None, *, include_untagged: bool = True,
                 skip_unsupported: bool = False) -> Selection:
    """The edits of ``model``'s stack that an export of ``edit_set`` carries (module docstring)."""
    names: frozenset[str] | None
    if edit_set is None:
        if not include_untagged:
            raise ExportError("include_untagged=False needs edit_set=NAME (the set whose own edits to export)")
        names = None
    else:
        names = frozenset([edit_set] if isinstance(edit_set, str) else edit_set)
        for n in names:
            _sets.check_name(n)
        _sets.validate(set(model.edit_sets), names)
    chosen = [e for e in model.stack if _wanted(e, names, include_untagged)]
    bad = [e for e in chosen if not isinstance(e.entry, DeltaEntry)]
    if bad and not skip_unsupported:
        lines = [f"  {e.id} {e.method} ({e.entry.kind}): {_why(e)}" for e in bad]
        raise ExportError(
            f"{len(bad)} edit(s) are not weight deltas and cannot be exported as weights:\n" + "\n".join(lines) +
            "\nOnly side-car delta methods export (rome, memit, alphaedit, pmet, ultraedit, ft-l, ft-m, kn, mend, "
            "lora, adalora). Remove those edits, export an edit set without them, or pass skip_unsupported=True "
            "(CLI: --skip-unsupported) to leave them out; keep them with model.stack.save(dir) and serve with "
            "editwrap.")
    return Selection([e for e in chosen if isinstance(e.entry, DeltaEntry)],
                     [(e, _why(e)) for e in bad], edit_set, include_untagged)


def module_parts(model: Any, edits: Sequence[Edit]) -> dict[str, list[tuple[Edit, dict[str, torch.Tensor]]]]:
    """``{module name: [(edit, part), ...]}`` in stack order, after checking every module is a
    Linear or a GPT-2 Conv1D (the layers a side-car, and a LoRA, can sit on)."""
    out: dict[str, list[tuple[Edit, dict[str, torch.Tensor]]]] = {}
    for e in edits:
        assert isinstance(e.entry, DeltaEntry)
        for name, part in e.entry.parts.items():
            out.setdefault(name, []).append((e, part))
    for name in out:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise ExportError(f"edit(s) {[e.id for e, _ in out[name]]} change module {name!r}, which this model "
                              "does not have; export from the model the stack was made on") from None
        if not (isinstance(mod, nn.Linear) or is_conv1d(mod)):
            raise ExportError(f"module {name!r} is a {type(mod).__name__}; only Linear and GPT-2 Conv1D layers export "
                              "as LoRA or folded weights")
    return out


def out_in(model: Any, name: str) -> tuple[int, int]:
    """(out_features, in_features) of a Linear or Conv1D module."""
    mod = model.get_submodule(name)
    if is_conv1d(mod):
        return int(mod.weight.shape[1]), int(mod.weight.shape[0])
    return int(mod.out_features), int(mod.in_features)


def dense_delta(parts: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The summed (out, in) delta of several parts, in float64 (one rounding when it is cast)."""
    total: torch.Tensor | None = None
    for p in parts:
        d = torch.zeros((), dtype=torch.float64)
        if "U" in p:
            d = p["U"].double() @ p["V"].double().T
        if "D" in p:
            d = d + p["D"].double()
        total = d if total is None else total + d
    assert total is not None
    return total


def export_note(model: Any, sel: Selection, kind: str, **extra: Any) -> dict[str, Any]:
    """The JSON note written beside every export: what was folded in, from which base."""
    from .._version import __version__

    def rec(e: Edit) -> dict[str, Any]:
        return {"id": e.id, "method": e.method, "kind": e.entry.kind, "edit_set": e.edit_set, "created": e.created,
                "facts": [{k: v for k, v in f.to_json().items() if k in ("prompt", "subject", "target_new",
                                                                          "ground_truth")} for f in e.facts]}
    es = sel.edit_set
    return {"export": kind, "editwrap_version": __version__,
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "base_model": model.name_or_path, "base_fingerprint": model.fingerprint(),
            "edit_set": es if es is None or isinstance(es, str) else sorted(es),
            "include_untagged": sel.include_untagged,
            "edits": [rec(e) for e in sel.edits],
            "skipped": [{**rec(e), "reason": why} for e, why in sel.skipped], **extra}
