"""SERAC retrieval-cache entries: stored edits routed through a scope classifier.

A :class:`SeracEntry` holds edits ``"<prompt> <target>"``, the MiniLM embeddings of their
prompts (``keys``, saved as tensors) and the path + id of the trained SERAC artifact (scope
classifier and counterfactual model, see :mod:`editwrap.methods.serac`). It acts on the *text
plane* through ``route_text``: ``generate_text``, ``loglikelihood`` and the KnowEdit scorer ask
the stack, top first, for the first entry that routes an input. The top-most cache entry routes
for every cache entry on the stack: the input is scored against every cached edit with each
entry's classifier; if the best in-scope probability reaches that entry's threshold, the input
becomes ``New Fact: <edit>\\nPrompt: <input>`` for the counterfactual model, else it stays with
the host (the base model with its weight / adapter / prompt entries). Nothing is installed on the
model, so cache entries pop and remove exactly in any order and compose with every other kind.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...entries.base import Entry, register_entry

__all__ = ["SeracEntry"]


@register_entry
class SeracEntry(Entry):
    kind = "cache"
    plane = "text"
    removable_anywhere = True

    def __init__(self, facts: Sequence[str], keys: torch.Tensor, artifact: str, artifact_id: str = "",
                 threshold: float | None = None) -> None:
        if not facts or len(facts) != int(keys.shape[0]):
            raise ValueError("a cache entry needs one key embedding per stored edit (at least one)")
        self.facts = [str(f) for f in facts]
        self.keys = keys.detach().float().cpu().contiguous()
        self.artifact_path = str(artifact)
        self.artifact_id = artifact_id
        self.threshold = threshold

    def artifact(self) -> Any:
        from .artifact import load_artifact

        art = load_artifact(self.artifact_path)
        if self.artifact_id and art.id and art.id != self.artifact_id:
            raise ValueError(f"SERAC artifact {self.artifact_path} changed since this edit was made "
                             f"(id {art.id}, edit made with {self.artifact_id}); recompute the edit")
        return art

    def attach(self, host: Any, key: str) -> None:
        self.artifact()  # fail at push (not at first query) when the artifact is missing

    def detach(self, host: Any, key: str) -> None:
        return None

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        """In-scope probabilities (len(texts), n edits) with this entry's classifier."""
        art = self.artifact()
        return art.classifier.matrix(self.keys, art.embed(list(texts)))

    def route_text(self, host: Any, text: str) -> tuple[str, Any] | None:
        edits = host._active_edits()
        top = next((e.entry for e in reversed(edits) if isinstance(e.entry, SeracEntry)), None)
        if top is not self:
            return None  # the top-most cache entry routes for all of them (found from the top: O(1) per entry)
        caches = [e.entry for e in edits if isinstance(e.entry, SeracEntry)]
        groups: dict[tuple[str, str], list[SeracEntry]] = {}
        for c in caches:  # one query embedding and one classifier call per artifact, not per entry
            groups.setdefault((c.artifact_path, c.artifact_id), []).append(c)
        best: tuple[float, SeracEntry, int] | None = None
        for group in groups.values():
            art = group[0].artifact()
            p = art.classifier.matrix(torch.cat([c.keys for c in group]), art.embed([text]))[0]
            j = int(p.argmax())
            prob = float(p[j])
            if best is None or prob > best[0]:
                for c in group:  # the entry and row of the j-th key
                    if j < len(c.facts):
                        best = (prob, c, j)
                        break
                    j -= len(c.facts)
        prob, c, i = best  # type: ignore[misc]
        art = c.artifact()
        thr = c.threshold if c.threshold is not None else art.threshold
        if prob < thr:
            return None
        from .artifact import cf_text

        return cf_text(c.facts[i], text), art.counterfactual(host)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys}

    def meta(self) -> dict[str, Any]:
        return {"facts": self.facts, "artifact": self.artifact_path, "artifact_id": self.artifact_id,
                "threshold": self.threshold}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "SeracEntry":
        return cls(meta["facts"], tensors["keys"], meta["artifact"], meta.get("artifact_id", ""), meta.get("threshold"))

    def nbytes(self) -> int:
        return self.keys.numel() * 4 + sum(len(f.encode("utf-8")) for f in self.facts)

    def summary(self) -> str:
        return f"cache ({len(self.facts)} edit(s), SERAC artifact {self.artifact_path}; text plane only)"
