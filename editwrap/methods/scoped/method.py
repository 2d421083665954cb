"""Scoped side-cars: ROME, MEMIT, AlphaEdit, UltraEdit or FT-M edits that apply only inside their scope.

``scoped-rome`` (and ``scoped-memit``, ``scoped-alphaedit``, ``scoped-ultraedit``, ``scoped-ft-m``) computes the base
editor's delta exactly as the base method would, then stores it with the sentence embeddings of
the facts' prompts instead of adding it to every forward. At inference a row receives the delta of
the one edit whose prompt its text is most similar to, if that similarity reaches
``scope_threshold`` (:mod:`editwrap.ops.scope`); otherwise the row runs unedited. No classifier is
trained: routing is a nearest-prompt match with one threshold.

The base method is reached through the registry (``get_method``), never through its internals. A
single-fact base (ROME) given several facts makes one delta per fact. Every delta is computed with
the other scoped edits routed nowhere: at inference the edit's own prompts reach it alone, so a
similar earlier edit must not shape it. A batch base (MEMIT, AlphaEdit, UltraEdit) makes one delta
for the batch, routed from any of its prompts. State a base keeps on the stack for its next edit
(AlphaEdit's protected keys, UltraEdit's running statistics) is found by method name, so scoped
edits neither read nor extend it: each is computed as the base's first edit would be.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, ClassVar, Sequence

import torch

from ...entries.scoped import ScopedDeltaEntry
from ...facts import Fact
from ...ops.scope import as_routed, load_embedder_named, scope_router, without_subject
from ...stack import Edit
from ..base import MethodBase, get_method, method_class, register_method
from .. import alphaedit, ft, memit, rome, ultraedit  # noqa: F401  (registers the base editors first)
from .hparams import SCOPED_DEFAULTS, ScopeFields, scoped_hparams

__all__ = ["BASES", "ScopedMethod", "scoped_method"]

#: base editors that produce side-car weight deltas and can be scoped
BASES = ("rome", "memit", "alphaedit", "ultraedit", "ft-m")


class ScopedMethod(MethodBase):
    """Shared behaviour of the scoped editors; :func:`scoped_method` makes one per base."""

    base: ClassVar[str] = ""
    family = "lifelong"
    supports_quantized = True

    def default_hparams(self, model: Any) -> Any:
        """The base method's defaults for this model with :data:`SCOPED_DEFAULTS`, plus the scope fields'."""
        return self.Hparams(**{**get_method(self.base).default_hparams(model).model_dump(),
                               **SCOPED_DEFAULTS.get(self.base, {})})

    def compute(self, model: Any, facts: Sequence[Fact], hp: Any) -> Edit:
        t0 = time.time()
        base = get_method(self.base)
        scope = {n: getattr(hp, n) for n in ScopeFields.model_fields}
        base_hp = base.Hparams.model_validate({k: v for k, v in hp.model_dump().items() if k not in scope})
        router = scope_router(model, hp.scope_embedder, create=False)  # refuses a second embedder before any work
        groups = [[f] for f in facts] if base.single_fact else [list(facts)]
        cells, infos, subjects = [], [], []
        for group in groups:
            with router.suspended() if router is not None else contextlib.nullcontext():
                edit = base.compute(model, group, base_hp)
            parts = getattr(edit.entry, "parts", None)
            if not isinstance(parts, dict) or not parts:
                raise TypeError(f"method {self.base!r} did not return side-car delta parts; it cannot be scoped")
            keys, subj = self._keys(model, group, hp)
            cells.append((parts, keys))
            subjects.append(subj)
            infos.append(edit.info)
        entry = ScopedDeltaEntry(cells, hp.scope_threshold, hp.scope_embedder, subjects)
        info = dict(infos[0]) if len(infos) == 1 else {"cells": len(infos)}
        info["seconds"] = round(time.time() - t0, 3)
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)

    @staticmethod
    def _keys(model: Any, facts: Sequence[Fact], hp: Any) -> tuple[torch.Tensor, list[str | None]]:
        """Unit-norm embeddings of the facts' prompts as the router will see them (tokenised and
        decoded without special tokens), without their subject for a relation match; and the subjects."""
        tok = model.tokenizer
        subjects = [f.subject if hp.scope_match == "relation" and f.subject else None for f in facts]
        texts = [without_subject(as_routed(tok, f.text_prompt), s)
                 for f, s in zip(facts, subjects)]
        return load_embedder_named(hp.scope_embedder)(texts).float(), subjects


def scoped_method(base: str) -> type:
    """Register ``scoped-<base>``: the base's hyperparameters plus the scope fields."""
    b = method_class(base)
    cls = type(f"Scoped{b.__name__}", (ScopedMethod,), {
        "__module__": __name__,
        "name": f"scoped-{b.name}",
        "display_name": f"{b.display_name} (scoped)",
        "base": b.name,
        "rank": b.rank,
        "Hparams": scoped_hparams(b.Hparams),
        "needs_subject": b.needs_subject,
        "single_fact": False,
        "__doc__": f"{b.display_name} deltas applied only to inputs routed to their edit.",
    })
    return register_method(cls)


for _b in BASES:
    scoped_method(_b)
