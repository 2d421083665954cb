"""Edits out of editwrap: a PEFT LoRA adapter, a merged checkpoint, a GGUF file.

* :func:`export_peft` — the side-car weight deltas as one standard PEFT LoRA adapter (vLLM, TGI
  and PEFT load it; one adapter per edit set for multi-LoRA serving). Also ``model.stack.export_peft``.
* :func:`export_merged` — a transformers checkpoint with the edits folded in, its tokenizer and a
  JSON note of the edits.
* :func:`export_gguf` — a GGUF file for llama.cpp / Ollama (Llama architecture).

All three pick edits the same way (:mod:`editwrap.export.select`) and refuse entries that are not
weight deltas (GRACE, WISE, MELO, T-Patcher, IKE, SERAC) by name. See docs/export.md.
"""
from .gguf_file import export_gguf
from .merged import export_merged
from .peft_adapter import export_peft, export_peft_sets
from .select import ExportError

__all__ = ["export_peft", "export_peft_sets", "export_merged", "export_gguf", "ExportError"]
