"""SERAC (Mitchell et al. 2022, "Memory-Based Model Editing at Scale"): a trained retrieval cache.

``model.edit(fact, method="serac", artifact=DIR)`` stores the fact in a
:class:`~editwrap.methods.serac.entry.SeracEntry` (text plane) together with the MiniLM embedding of
its prompt. At query time the scope classifier trained with ``editwrap train serac`` (see
:mod:`.train`) decides whether the input is about a cached edit; in scope, the input is answered
by the counterfactual model (base checkpoint + a trained low-rank delta, reading
``New Fact: <edit>\\nPrompt: <input>``), out of scope by the host model as it is (other entries
included). Weights are never written; pop/remove/save/load are those of any text-plane entry.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

from .entry import SeracEntry
from ...facts import Fact
from .hparams import ARTIFACT_ENV, SeracHparams, SeracTrainConfig
from ...stack import Edit
from ..base import register_method
from .artifact import SeracArtifact, load_artifact
from .train import train_serac

__all__ = ["Serac"]


@register_method
class Serac:
    name = "serac"
    Hparams = SeracHparams
    needs_subject = False

    def default_hparams(self, model: Any) -> SeracHparams:
        return SeracHparams.for_model(model)

    def compute(self, model: Any, facts: Sequence[Fact], hp: SeracHparams) -> Edit:
        t0 = time.time()
        path = hp.artifact or os.environ.get(ARTIFACT_ENV)
        if not path:
            raise ValueError(f"SERAC needs a trained artifact: pass artifact='DIR' (from `editwrap train serac`) "
                             f"or set ${ARTIFACT_ENV}")
        art = load_artifact(path)
        texts = [f"{f.text_prompt} {f.target_new.strip()}" for f in facts]
        keys = art.embed([f.text_prompt for f in facts])
        entry = SeracEntry(texts, keys, art.path, art.id, hp.threshold)
        info = {"seconds": round(time.time() - t0, 3), "artifact": art.path,
                "counterfactual": art.meta.get("info", {}).get("counterfactual")}
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)
