"""Second-moment statistics ``C = E[k kᵀ]`` of a module's inputs, cached on disk.

ROME/MEMIT/AlphaEdit need ``C`` of the edited layer's keys. It is computed over a text corpus on
the *base* model (side-cars switched off for the pass), for all requested layers in one pass, and
cached as ``<model fingerprint>/<module>--<corpus>--<n_tokens>.safetensors`` under ``<cache>/stats``
(or ``$EDITWRAP_CACHE_STATS``).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..defaults import cache_dir
from .corpus import corpus_id, iter_corpus
from .hooks import capture, stop_after
from .profile import phase

__all__ = ["second_moment", "stats_path", "sidecars_off"]


@contextlib.contextmanager
def sidecars_off(host: Any):
    cars = list(getattr(host, "_sidecars", {}).values())
    states = [c.enabled for c in cars]
    try:
        for c in cars:
            c.enabled = False
        yield
    finally:
        for c, s in zip(cars, states):
            c.enabled = s


def stats_path(host: Any, module: str, corpus: Any, n_tokens: int) -> Path:
    fp = host.fingerprint() if hasattr(host, "fingerprint") else "anon"
    root = Path(os.environ["EDITWRAP_CACHE_STATS"]) if os.environ.get("EDITWRAP_CACHE_STATS") else cache_dir() / "stats"
    return root / fp / f"{module}--{corpus_id(corpus)}--{n_tokens}.safetensors"


def second_moment(host: Any, modules: list[str], *, corpus: str | Path | Iterable[str] | None = None,
                  n_tokens: int = 20000, seq_len: int = 128, batch_size: int = 8,
                  progress: bool = True) -> dict[str, torch.Tensor]:
    """Return ``{module: E[k kᵀ]}`` (float32, CPU) over ``n_tokens`` corpus tokens."""
    with phase("covariance"):
        return _second_moment(host, modules, corpus, n_tokens, seq_len, batch_size, progress)


def _second_moment(host: Any, modules: list[str], corpus: Any, n_tokens: int, seq_len: int, batch_size: int,
                   progress: bool) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    todo = []
    for m in modules:
        p = stats_path(host, m, corpus, n_tokens)
        if p.exists():
            out[m] = load_file(str(p))["mom2"]
        else:
            todo.append(m)
    if not todo:
        return out
    tok = host.tokenizer
    device = next(host.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    count = 0
    # Pack passages into fixed-length token windows (no padding, every position is real text).
    buf: list[int] = []
    windows: list[list[int]] = []
    for text in iter_corpus(corpus):
        buf.extend(tok(text + "\n", add_special_tokens=False)["input_ids"])
        while len(buf) >= seq_len:
            windows.append(buf[:seq_len])
            buf = buf[seq_len:]
        if len(windows) * seq_len >= n_tokens:
            break
    if buf and len(windows) * seq_len < n_tokens:
        windows.append(buf)
    if not windows:
        raise ValueError("the covariance corpus produced no tokens; pass a corpus with text in it")
    bar = tqdm(total=min(n_tokens, sum(len(w) for w in windows)), desc=f"covariance stats ({len(todo)} layer(s))",
               unit="tok", disable=not progress)
    with torch.no_grad(), sidecars_off(host), capture(host, todo, outputs=False) as cap, stop_after(host, todo) as run:
        for i in range(0, len(windows), batch_size):
            chunk = windows[i:i + batch_size]
            L = min(len(w) for w in chunk)
            ids = torch.tensor([w[:L] for w in chunk], device=device)
            run(input_ids=ids)
            for m in todo:
                k = cap[m]["input"].reshape(-1, cap[m]["input"].shape[-1]).to(torch.float64).cpu()
                sums[m] = sums[m] + k.T @ k if m in sums else k.T @ k
            count += ids.numel()
            bar.update(ids.numel())
            if count >= n_tokens:
                break
    bar.close()
    for m in todo:
        mom2 = (sums[m] / count).to(torch.float32).contiguous()
        p = stats_path(host, m, corpus, n_tokens)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        save_file({"mom2": mom2, "count": torch.tensor(count)}, str(tmp))
        tmp.replace(p)
        out[m] = mom2
    return out
