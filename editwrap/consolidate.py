"""Stack consolidation and fact retraction: joint re-solves that only an edit stack can do.

Sequentially pushed MEMIT/AlphaEdit edits are each solved with the others frozen in place, so
later solves work around earlier ones and errors accumulate. Every such entry keeps its facts'
optimised target values (``aux["z"]``), so the least-squares stage can be redone for all of them
at once without optimising anything again:

* :func:`consolidate` removes the chosen entries and pushes one entry, solved jointly over all
  their facts' keys and stored values (``method.resolve``), that still lists every fact;
* :func:`retract` removes one fact wherever it lives: an entry holding only that fact is removed;
  inside a multi-fact entry the solve is redone without it (which is, by construction, a fresh
  consolidation of the remaining facts).

The new entry goes on top of the stack. Entries that were above the consolidated ones stay
exact to remove (side-cars), but were computed with the old entries present; ``info`` records
which edits were replaced (``consolidated``).
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from .facts import Fact
from .methods.base import METHODS, get_method
from .errors import StackError

if TYPE_CHECKING:
    from .model import EditableModel
    from .stack import Edit

__all__ = ["consolidate", "retract", "resolvable_methods"]


def resolvable_methods() -> list[str]:
    """Methods whose entries store per-fact target values and can be re-solved jointly
    (``resolvable = True`` on the method class)."""
    return [name for name, cls in METHODS.items() if cls.resolvable]


def _resolvable(e: Edit) -> bool:
    return e.method in METHODS and METHODS[e.method].resolvable and "z" in getattr(e.entry, "aux", {})


def _pick(host: "EditableModel", edits: Any) -> list[Edit]:
    if edits is None:
        return [e for e in host.stack if _resolvable(e)]
    if isinstance(edits, slice):
        return host.stack.edits[edits]
    return [host.find(e) for e in edits]


def _check(chosen: Sequence[Edit], method: str) -> None:
    names = "/".join(resolvable_methods())
    if not chosen:
        raise StackError(f"nothing to consolidate: no {names} entries with stored target values on the stack")
    if len({e.edit_set for e in chosen}) > 1:
        raise StackError(f"the chosen edits belong to different edit sets {sorted({str(e.edit_set) for e in chosen})}; "
                         "consolidate each set separately (pass its edits)")
    for e in chosen:
        if e.method not in resolvable_methods():  # e.g. PMET's z is an MLP-output target, not a block output
            raise StackError(f"edit {e.id} ({e.method}) cannot be consolidated: only {names} entries "
                             "store block-output target values; pop or remove it instead")
        if "z" not in getattr(e.entry, "aux", {}):
            raise StackError(f"edit {e.id} ({e.method}) stores no target values (aux['z']); only "
                             f"{names} entries can be consolidated; pop or remove it instead")
    if method not in resolvable_methods():
        raise StackError(f"consolidate(method={method!r}) is not supported; choose one of "
                         f"{', '.join(resolvable_methods())}")
    layers = {tuple(e.hparams.get("layers", ())) for e in chosen}
    if len(layers) > 1:
        raise StackError(f"the edits were made on different layer ranges {sorted(layers)}; their target values "
                         "live at different layers, so they cannot be solved jointly")


def _hparams(host: "EditableModel", m: Any, base: dict[str, Any], overrides: dict[str, Any]) -> Any:
    fields = m.Hparams.model_fields
    return host.resolve_hparams(m, None, **{**{k: v for k, v in base.items() if k in fields}, **overrides})


def consolidate(host: "EditableModel", edits: Any = None, method: str | None = None,
                exclude: Iterable[Fact] = (), **overrides: Any) -> Edit:
    """Replace ``edits`` (default: every MEMIT/AlphaEdit entry) by one jointly solved entry.

    ``method``: the solve to use (default: the first edit's); ``exclude``: facts to leave out
    (how :func:`retract` works); ``overrides``: hyperparameters of the joint solve (e.g.
    ``mom2_update_weight``). Transactional: on error the stack is as before.
    """
    if host.is_merged:
        raise StackError("the stack is merged into the weights; call model.unmerge() before consolidating")
    chosen = _pick(host, edits)
    method = get_method(method or (chosen[0].method if chosen else "memit")).name
    _check(chosen, method)
    drop = {(f.prompt, f.target_new) for f in exclude}
    facts, zs = [], []
    for e in chosen:
        for f, z in zip(e.facts, e.entry.aux["z"]):
            if (f.prompt, f.target_new) not in drop:
                facts.append(f)
                zs.append(z)
    if not facts:
        raise StackError("no facts left to solve for; pop the edits instead")
    m = get_method(method)
    hp = _hparams(host, m, chosen[0].hparams, overrides)
    original = host.stack.edits
    host.restack([e for e in original if all(e is not c for c in chosen)])
    try:
        new = m.resolve(host, facts, torch.stack(zs), hp)
        new.entry.check_finite()
    except BaseException:
        host.restack(original)
        raise
    new.info.update(consolidated=[e.id for e in chosen], n_facts=len(facts))
    # the Norm-Anchor reference norm stays on the stack for later anchored edits (editwrap.ops.anchor)
    anchor = next((e.info["norm_anchor"] for e in chosen if "norm_anchor" in (e.info or {})), None)
    if anchor is not None:
        new.info["norm_anchor"] = {**anchor, "measured": False}
    new.edit_set = chosen[0].edit_set
    return host.push(new)


def retract(host: "EditableModel", fact: Fact | str) -> Edit | None:
    """Remove one fact (a Fact, or its prompt) from wherever it is on the stack.

    Returns the re-solved entry when the fact shared an entry with others, else None.
    """
    def match(f: Fact) -> bool:
        return f.prompt == fact if isinstance(fact, str) else (f.prompt, f.target_new) == (fact.prompt, fact.target_new)

    holders = [e for e in host.stack if any(match(f) for f in e.facts)]
    if not holders:
        raise StackError(f"no edit on the stack holds the fact {fact!r}")
    if len(holders) > 1:
        raise StackError(f"{len(holders)} edits hold {fact!r} ({', '.join(e.id for e in holders)}); retract from one "
                         "with consolidate([edit], exclude=[fact]) or remove the edits")
    e = holders[0]
    if all(match(f) for f in e.facts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            host.pop() if e is host.stack[-1] else host.remove(e)
        return None
    if not _resolvable(e):
        raise StackError(f"edit {e.id} ({e.method}) holds {len(e.facts)} facts and no stored target values, so one "
                         "fact cannot be taken out of it; remove the whole edit and re-edit the others")
    return consolidate(host, [e], exclude=[f for f in e.facts if match(f)])
