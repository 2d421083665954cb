"""MEND (Mitchell et al. 2022, "Fast Model Editing at Scale"): a trained editor network.

``model.edit(fact, method="mend", editor=DIR)`` computes the fine-tuning gradient taps of
``prompt + target_new`` on the model as it is now, maps them through the editor trained with
``editwrap train mend`` (see :mod:`.train`) and returns an ordinary low-rank
:class:`~editwrap.entries.delta.DeltaEntry` (``U`` out×T, ``V`` in×T per edited module, T =
number of tokens): pop is exact, save/load and composition are those of any weight delta.
"""
from __future__ import annotations

import functools
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from ...entries.delta import DeltaEntry
from ...facts import Fact
from .hparams import EDITOR_ENV, MendHparams
from ...ops.fingerprint import trained_on_other_base
from ...ops.hooks import frozen, get_module
from ...stack import Edit
from ..base import MethodBase, register_method
from .model import EDITOR_FILES, MendEditor, encode_edit, grad_taps
from .train import module_shape

__all__ = ["Mend", "load_editor"]


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float) -> tuple[MendEditor, dict[str, Any]]:
    ed, meta = MendEditor.load(path)
    ed.eval()
    for p in ed.parameters():
        p.requires_grad_(False)
    return ed, meta


def load_editor(path: str | os.PathLike) -> tuple[MendEditor, dict[str, Any]]:
    """A trained editor (memoised per process by path and file time)."""
    p = Path(path)
    f = p / EDITOR_FILES[0]
    if not f.is_file():
        raise FileNotFoundError(f"{p} is not a trained MEND editor (no {EDITOR_FILES[0]}); "
                                "train one with `editwrap train mend --data ... --out DIR`")
    return _load_cached(str(p.resolve()), f.stat().st_mtime)


@register_method
class Mend(MethodBase):
    name = "mend"
    Hparams = MendHparams
    display_name = "MEND"
    family = "trained"
    rank = 1
    artifact_field = "editor"
    cli = "editwrap.methods.mend.cli"
    suites = ("external-zsre",)
    knowedit_reference = {
        "recent": {"Edit Succ.": 95.75, "Portability": 55.88, "Locality": 94.76, "Fluency": 557.11},
        "zsre": {"Edit Succ.": 96.74, "Portability": 60.41, "Locality": 92.79, "Fluency": 524.33},
        "wikibio": {"Edit Succ.": 93.66, "Locality": 69.51, "Fluency": 609.39},
        "counterfact": {"Edit Succ.": 80.03, "Portability": 52.01, "Locality": 94.38, "Fluency": 555.72},
        "convsent": {"Edit Succ.": 50.76, "Locality": 3.42, "Fluency": 379.43},
        "sanitation": {"Edit Succ.": 0.00, "Locality": 5.29, "Fluency": 407.18},
    }

    def compute(self, model: Any, facts: Sequence[Fact], hp: MendHparams) -> Edit:
        t0 = time.time()
        path = hp.editor or os.environ.get(EDITOR_ENV)
        if not path:
            raise ValueError(f"MEND needs a trained editor: pass editor='DIR' (from `editwrap train mend`) or set "
                             f"${EDITOR_ENV}")
        editor, meta = load_editor(path)
        for m, shape in zip(editor.module_names, editor.shapes):
            try:
                got = module_shape(get_module(model, m))
            except KeyError:
                raise ValueError(f"MEND editor {path} edits {m}, which this model does not have; "
                                 "train an editor for this model") from None
            if got != tuple(shape):
                raise ValueError(f"MEND editor {path} expects {m} of shape {tuple(shape)} (out, in) but the model's "
                                 f"is {got}; train an editor for this model")
        if trained_on_other_base(meta.get("info", {}), model):
            warnings.warn(f"MEND editor {path} was trained on another base model (fingerprint "
                          f"{meta['info']['base_fingerprint']}); edits may be poor", stacklevel=3)
        device = next(model.parameters()).device
        editor = editor.to(device)
        enc, labels = encode_edit(model.tokenizer, [f.text_prompt for f in facts], [f.target_new for f in facts],
                                  device)
        with frozen(model):
            taps = grad_taps(model, editor.module_names, enc, labels)
        with torch.no_grad():
            factors = editor.factors(taps)
        parts = {m: {"U": U * hp.lr_scale, "V": V} for m, (U, V) in factors.items()}
        info = {"seconds": round(time.time() - t0, 3), "rank": int(next(iter(factors.values()))[0].shape[1]),
                "editor": str(path)}
        return Edit(self.name, facts, hp.model_dump(mode="json"), DeltaEntry(parts), info=info)
