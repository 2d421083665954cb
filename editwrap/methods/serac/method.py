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
from .hparams import ARTIFACT_ENV, SeracHparams
from ...stack import Edit
from ..base import MethodBase, register_method
from .artifact import load_artifact

__all__ = ["Serac"]


@register_method
class Serac(MethodBase):
    name = "serac"
    Hparams = SeracHparams
    display_name = "SERAC"
    family = "trained"
    artifact_field = "artifact"
    supports_quantized = False
    quantized_reason = "its counterfactual model is a float copy of the base model"
    cli = "editwrap.methods.serac.cli"
    knowedit_reference = {
        "recent": {"Edit Succ.": 98.68, "Portability": 63.52, "Locality": 100.00, "Fluency": 553.19},
        "zsre": {"Edit Succ.": 99.67, "Portability": 56.48, "Locality": 30.23, "Fluency": 410.89},
        "wikibio": {"Edit Succ.": 99.69, "Locality": 69.79, "Fluency": 606.95},
        "counterfact": {"Edit Succ.": 99.99, "Portability": 76.07, "Locality": 98.96, "Fluency": 549.91},
        "convsent": {"Edit Succ.": 62.75, "Locality": 0.26, "Fluency": 458.21},
        "sanitation": {"Edit Succ.": 0.00, "Locality": 100.00, "Fluency": 416.29},
    }

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
