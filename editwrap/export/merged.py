"""A plain transformers checkpoint with the selected edits folded into the weights.

``model.save_pretrained(dir)`` already folds *every* side-car into the weights it writes, but
writes no tokenizer and no record of what was folded in. :func:`export_merged` folds only the
selected edits (an edit set, see :mod:`editwrap.export.select`), writes the tokenizer beside the
weights, and ``editwrap_edits.json`` (ids, methods, edit sets, facts). The live model is not
touched: the folded tensors are computed on the side (``W + ΔW`` in float64, cast once) and handed
to transformers' ``save_pretrained(state_dict=...)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ..entries.delta import is_conv1d
from ..ops.fingerprint import is_quantized
from .select import ExportError, Selection, dense_delta, export_note, module_parts, select_edits

__all__ = ["export_merged", "merged_state_dict", "NOTE_NAME"]

NOTE_NAME = "editwrap_edits.json"


def _tied_to(model: Any, name: str) -> list[str]:
    """Other parameters sharing ``name``'s weight storage (e.g. an lm_head tied to the embeddings)."""
    w = model.get_submodule(name).weight
    return [n for n, p in model.named_parameters(remove_duplicate=False)
            if p.data_ptr() == w.data_ptr() and n != f"{name}.weight"]


def merged_state_dict(model: Any, sel: Selection) -> dict[str, torch.Tensor]:
    """The model's state dict with the selected edits folded into their modules' weights."""
    if model.is_merged:
        raise ExportError("the stack is merged into the weights; call model.unmerge() first (the export folds "
                          "the selected edits itself)")
    if is_quantized(model):
        raise ExportError("the model is quantized (8-/4-bit): its int8 weights cannot hold the edits exactly, so no "
                          "merged checkpoint is written. Load the base model in float (no quantization_config) and "
                          "export from it, or export a PEFT adapter (export_peft) for the quantized base")
    sd = dict(model.state_dict())
    for name, items in module_parts(model, sel.edits).items():
        tied = _tied_to(model, name)
        if tied:
            raise ExportError(f"module {name!r} (edits {[e.id for e, _ in items]}) shares its weight with {tied}; "
                              "folding the edit would change both. Export a PEFT adapter instead")
        w = model.get_submodule(name).weight
        dw = dense_delta([p for _, p in items])
        if is_conv1d(model.get_submodule(name)):
            dw = dw.T
        sd[f"{name}.weight"] = (w.detach().to("cpu", torch.float64) + dw).to(w.device, w.dtype)
    return sd


def export_merged(model: Any, path: str | os.PathLike, edit_set: str | Sequence[str] | None = None, *,
                  include_untagged: bool = True, skip_unsupported: bool = False, **save_kwargs: Any) -> Path:
    """Write model (selected edits folded in) + tokenizer + ``editwrap_edits.json`` to ``path``.

    The folder loads with plain ``AutoModelForCausalLM.from_pretrained(path)`` /
    ``AutoTokenizer.from_pretrained(path)`` (no editwrap needed), or with
    ``EditableModel.from_pretrained(path)`` to edit further. Edits that are not weight deltas are
    refused by name unless ``skip_unsupported`` (then listed under ``skipped`` in the note).
    """
    sel = select_edits(model, edit_set, include_untagged=include_untagged, skip_unsupported=skip_unsupported)
    sd = merged_state_dict(model, sel)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    # the transformers class's own save (EditableModel.save_pretrained would fold every side-car again)
    # (the class is (EditableModel, <transformers class>); naming it by MRO keeps export off editwrap.model's imports)
    super(type(model).__mro__[1], model).save_pretrained(str(out), state_dict=sd, **save_kwargs)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out))
    note = export_note(model, sel, "merged")
    (out / NOTE_NAME).write_text(json.dumps(note, indent=2), encoding="utf-8")
    return out
