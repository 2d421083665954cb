"""A GGUF file (llama.cpp, Ollama, LM Studio) from an edited model or a merged checkpoint folder.

Written with the ``gguf`` package the way llama.cpp's ``convert_hf_to_gguf.py`` writes a Llama
model: tensors under the GGUF names of ``gguf.get_tensor_name_map`` (``blk.N.attn_q`` …), the rows
of ``q_proj``/``k_proj`` permuted into llama.cpp's rotary layout (transformers' GGUF loader undoes
the same permutation), 1-D tensors in float32 and matrices in float32 or float16, no quantization
(quantize afterwards with llama.cpp's ``llama-quantize`` if wanted). The tokenizer goes in as
llama.cpp's ``gpt2`` (byte-level BPE) vocabulary: tokens, types, merges, special ids, the BOS flag
and the chat template, which is what transformers needs to rebuild the tokenizer.

Scope, refused with a message otherwise: the Llama architecture (SmolLM, Llama 2/3-shaped models
without rope scaling, biases or other activations) and byte-level BPE tokenizers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from .select import ExportError

__all__ = ["export_gguf", "write_gguf", "check_architecture"]

#: llama.cpp ``tokenizer.ggml.pre`` names for the pre-tokenizers recognised from a tokenizer.json
_PRE_PREFERENCE = ("llama-bpe", "qwen2", "gpt-4o", "tekken")


def check_architecture(config: Any) -> None:
    """Refuse, with the reason, anything this writer would not reproduce exactly."""
    mt = getattr(config, "model_type", None)
    if mt != "llama":
        raise ExportError(f"GGUF export supports the Llama architecture (model_type 'llama'); this model is "
                          f"{mt!r}. Export a merged checkpoint (editwrap export merged) and convert it with "
                          "llama.cpp's convert_hf_to_gguf.py, which knows more architectures")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if kind not in (None, "default"):
        raise ExportError(f"GGUF export: rope scaling {kind!r} is not written by this exporter (transformers' GGUF "
                          "loader would not restore it); use llama.cpp's convert_hf_to_gguf.py on a merged checkpoint")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise ExportError(f"GGUF export: config.{flag}=True (bias tensors) is not supported; use llama.cpp's "
                              "convert_hf_to_gguf.py on a merged checkpoint")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ExportError(f"GGUF export: hidden_act {config.hidden_act!r} is not Llama's silu")


def _rope_theta(config: Any) -> float:
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's rotary row order for q/k (``LlamaModel.permute`` of convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _byte_level(spec: dict[str, Any]) -> bool:
    def has(node: Any) -> bool:
        if not isinstance(node, dict):
            return False
        return node.get("type") == "ByteLevel" or any(has(n) for n in node.get("pretokenizers", []) or [])
    return has(spec.get("pre_tokenizer")) or has(spec.get("decoder"))


def _detect_pre(spec: dict[str, Any]) -> str:
    """llama.cpp's pre-tokenizer name for this tokenizer.json's pre_tokenizer, or an error saying
    to pass ``tokenizer_pre``."""
    pt = spec.get("pre_tokenizer") or {}
    items = pt.get("pretokenizers", [pt]) if pt.get("type") == "Sequence" else [pt]
    kinds = [i.get("type") for i in items]
    if kinds == ["ByteLevel"] and items[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and items[0].get("individual_digits") and items[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not items[1].get("use_regex", True):
        regex = (items[0].get("pattern") or {}).get("Regex")
        try:
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS as splits
        except ImportError:  # older transformers: no table to recognise the regex by
            splits = {}
        names = [n for n, r in splits.items() if r == regex]
        if names:
            return next((n for n in _PRE_PREFERENCE if n in names), names[0])
    raise ExportError(f"GGUF export: cannot tell which llama.cpp pre-tokenizer matches this tokenizer's "
                      f"pre_tokenizer {json.dumps(pt)[:200]}; pass tokenizer_pre=NAME (CLI --tokenizer-pre; "
                      "llama.cpp's tokenizer.ggml.pre, e.g. gpt2, llama-bpe, qwen2, smollm)")


def _add_tokenizer(w: Any, tok: Any, n_vocab: int, pre: str | None) -> None:
    import gguf

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ExportError("GGUF export needs a fast (tokenizers-backed) tokenizer to read its vocabulary")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or not _byte_level(spec):
        raise ExportError(f"GGUF export writes byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM, Qwen style); this "
                          f"one is {model.get('type')} without ByteLevel. Convert a merged checkpoint with llama.cpp's "
                          "convert_hf_to_gguf.py instead")
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    id2tok = {i: t for t, i in model["vocab"].items()}
    known = set(id2tok) | set(added)
    if known and max(known) >= n_vocab:
        raise ExportError(f"the tokenizer has ids up to {max(known)} but the model's vocabulary has {n_vocab} rows; "
                          "pass the tokenizer the model was trained with")
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        elif i in id2tok:
            tokens.append(id2tok[i])
            types.append(gguf.TokenType.NORMAL)
        else:  # embedding rows past the tokenizer (padding to a multiple): named as convert_hf_to_gguf does
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre or _detect_pre(spec))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    for attr, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                      ("unk_token_id", w.add_unk_token_id), ("pad_token_id", w.add_pad_token_id)):
        if getattr(tok, attr, None) is not None:
            add(int(getattr(tok, attr)))
    with_special, plain = tok("a")["input_ids"], tok("a", add_special_tokens=False)["input_ids"]
    extra = len(with_special) > len(plain)
    w.add_add_bos_token(bool(extra and with_special[0] == tok.bos_token_id and plain[:1] != with_special[:1]))
    w.add_add_eos_token(bool(extra and with_special[-1] == tok.eos_token_id and plain[-1:] != with_special[-1:]))
    if isinstance(getattr(tok, "chat_template", None), str):
        w.add_chat_template(tok.chat_template)


def write_gguf(config: Any, state_dict: dict[str, torch.Tensor], tokenizer: Any, out: str | os.PathLike, *,
               dtype: str = "f32", tokenizer_pre: str | None = None, name: str = "model",
               note: dict[str, Any] | None = None) -> Path:
    """Write a Llama ``state_dict`` (HF names) + tokenizer as one GGUF file, atomically."""
    import gguf
    import numpy as np

    check_architecture(config)
    if dtype not in ("f32", "f16"):
        raise ExportError(f"dtype must be 'f32' or 'f16', got {dtype!r}")
    n_layers, hidden = int(config.num_hidden_layers), int(config.hidden_size)
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    head_dim = int(getattr(config, "head_dim", None) or hidden // n_head)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    try:
        w.add_name(name)
        w.add_context_length(int(config.max_position_embeddings))
        w.add_embedding_length(hidden)
        w.add_block_count(n_layers)
        w.add_feed_forward_length(int(config.intermediate_size))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_freq_base(_rope_theta(config))
        w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        w.add_rope_dimension_count(head_dim)
        if head_dim != hidden // n_head:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_vocab_size(int(config.vocab_size))
        w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(w, tokenizer, int(config.vocab_size), tokenizer_pre)
        if note is not None:  # provenance: which edits are folded in (llama.cpp ignores unknown keys)
            w.add_string("editwrap.edits", json.dumps(note))
        tied = bool(getattr(config, "tie_word_embeddings", False))
        for key, t in state_dict.items():
            if key == "lm_head.weight" and tied:
                continue  # llama.cpp reuses token_embd, and transformers re-ties when output.weight is absent
            base, suffix = key.rsplit(".", 1)
            gname = tmap.get_name(base)
            if gname is None:
                raise ExportError(f"tensor {key!r} has no GGUF name in the llama layout; this checkpoint is not a "
                                  "plain Llama model")
            arr = t.detach().to("cpu", torch.float32)
            if base.endswith("self_attn.q_proj"):
                arr = _permute(arr, n_head)
            elif base.endswith("self_attn.k_proj"):
                arr = _permute(arr, n_kv)
            a = arr.numpy()
            w.add_tensor(f"{gname}.{suffix}", a.astype(np.float16) if dtype == "f16" and a.ndim == 2 else a)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def export_gguf(source: Any, out: str | os.PathLike, edit_set: str | Sequence[str] | None = None, *,
                include_untagged: bool = True, skip_unsupported: bool = False, dtype: str = "f32",
                tokenizer: Any = None, tokenizer_pre: str | None = None, name: str | None = None) -> Path:
    """Write ``out`` (a .gguf file) from an edited model (selected edits folded in, like
    :func:`~editwrap.export.merged.export_merged`) or from a merged checkpoint folder.

    Read back with ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)``, llama.cpp
    (``llama-cli -m out.gguf``) or Ollama (``FROM ./out.gguf`` in a Modelfile).
    """
    if isinstance(source, (str, os.PathLike)):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from ..ops.tokens import check_tokenizer_files

        src = str(source)
        config = AutoConfig.from_pretrained(src)
        check_architecture(config)  # before loading any weight
        if tokenizer is None:
            check_tokenizer_files(src)
            tokenizer = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        state = model.state_dict()
        note_file = Path(src) / "editwrap_edits.json"
        note = json.loads(note_file.read_text(encoding="utf-8")) if note_file.is_file() else None
        label = name or Path(src).resolve().name
    else:
        from .merged import merged_state_dict
        from .select import export_note, select_edits

        model = source
        check_architecture(model.config)
        sel = select_edits(model, edit_set, include_untagged=include_untagged, skip_unsupported=skip_unsupported)
        state = merged_state_dict(model, sel)
        note = export_note(model, sel, "gguf")
        tokenizer = tokenizer or model.tokenizer
        label = name or (Path(model.name_or_path).name if model.name_or_path else "model") + "-edited"
    return write_gguf(model.config, state, tokenizer, out, dtype=dtype, tokenizer_pre=tokenizer_pre, name=label,
                      note=note)
