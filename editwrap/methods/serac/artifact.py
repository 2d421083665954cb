"""A trained SERAC artifact: scope classifier + counterfactual-model delta (safetensors + JSON).

``OUT/serac.safetensors`` holds ``classifier/<param>`` and ``cf/<module>/{U,V}`` (the
counterfactual delta ``ΔW = U Vᵀ``, out×r and in×r); ``OUT/serac.json`` holds the config, the
modules, the embedder, the calibrated threshold and training info (records, data, base model
fingerprint, classifier accuracy, counterfactual losses, seconds).

The counterfactual model is a private copy of the host's *base* weights (side-car deltas,
activation hooks and other entries of the host are not part of it) with ``ΔW`` folded into its
weights; it is built once per host and artifact and memoised in ``host._ew_cache``.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ...ops.fingerprint import trained_on_other_base

__all__ = ["ScopeClassifier", "SeracArtifact", "load_artifact", "clone_base", "cf_text", "ARTIFACT_FILES"]

ARTIFACT_FILES = ("serac.safetensors", "serac.json")
CF_TEMPLATE = "New Fact: {fact}\nPrompt: {text}"


def cf_text(fact: str, text: str) -> str:
    """What the counterfactual model reads for ``text`` given the retrieved edit ``fact``."""
    return CF_TEMPLATE.format(fact=fact, text=text)


class ScopeClassifier(nn.Module):
    """logit(in scope | edit u, input v) = a·cos(u, v) + b + MLP([u*v, |u-v|]) on unit embeddings."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.tensor(-7.0))

    def pair_logits(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Aligned rows: u, v (N, d) -> (N,)."""
        cos = (u * v).sum(-1)
        feats = torch.cat([u * v, (u - v).abs()], -1)
        return self.scale * cos + self.bias + self.mlp(feats).squeeze(-1)

    @torch.no_grad()
    def matrix(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """In-scope probabilities (Q, E) of every query against every cached edit key."""
        E, Q = keys.shape[0], queries.shape[0]
        u = keys[None].expand(Q, E, -1).reshape(Q * E, -1)
        v = queries[:, None].expand(Q, E, -1).reshape(Q * E, -1)
        return torch.sigmoid(self.pair_logits(u, v)).reshape(Q, E)


def _weight_key(name: str) -> str:
    return name.replace(".base_layer", "")


def clone_base(host: Any) -> nn.Module:
    """A plain (unwrapped, hook-free) copy of the host's base weights, eval mode, frozen."""
    from ...model import EditableModel
    from ...ops.fingerprint import is_quantized

    if is_quantized(host):
        raise ValueError("SERAC's counterfactual model is a float copy of the base model; load the model "
                         "without quantization_config to use method='serac'")
    base = [c for c in type(host).__mro__ if not issubclass(c, EditableModel) and issubclass(c, nn.Module)][0]
    p0 = next(host.parameters())
    clone = base(copy.deepcopy(host.config)).to(dtype=p0.dtype)
    want = clone.state_dict()
    merged = {f"{n}.weight": t for n, t in (getattr(host, "_merged", None) or {}).items()}
    sd = {}
    for k, v in host.state_dict().items():
        k2 = _weight_key(k)
        if k2 in want:
            sd[k2] = merged.get(k2, v)
    missing = [k for k in want if k not in sd]
    if missing:
        raise ValueError(f"cannot copy the base model for SERAC: {len(missing)} weights missing (e.g. {missing[:3]})")
    clone.load_state_dict(sd)
    clone.to(p0.device).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def fold_delta(model: nn.Module, parts: dict[str, dict[str, torch.Tensor]]) -> None:
    """W += U Vᵀ on a private model copy (Conv1D weights are stored transposed)."""
    from ...entries.delta import is_conv1d
    from ...ops.hooks import get_module

    with torch.no_grad():
        for name, p in parts.items():
            mod = get_module(model, name)
            dw = p["U"].float() @ p["V"].float().T
            if is_conv1d(mod):
                dw = dw.T
            w = mod.weight  # summed in float32, rounded once to a half-precision copy
            w.copy_((w.float() + dw.to(w.device)).to(w.dtype))


class SeracArtifact:
    """A loaded artifact: ``classify(keys, text)``, ``embed(texts)``, ``counterfactual(host)``."""

    def __init__(self, path: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.path, self.meta = path, meta
        self.threshold = float(meta.get("threshold", 0.5))
        self.embedder = meta.get("embedder")
        self.classifier = ScopeClassifier(int(meta["dim"]), int(meta["hidden"]))
        self.classifier.load_state_dict({k[len("classifier/"):]: v for k, v in tensors.items()
                                         if k.startswith("classifier/")})
        self.classifier.eval()
        self.cf_parts: dict[str, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("cf/"):
                mod, which = k[3:].rsplit("/", 1)
                self.cf_parts.setdefault(mod, {})[which] = v
        self.id = meta.get("artifact_id", "")
        self._qcache: dict[str, torch.Tensor] = {}

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        from ...ops.embed import embed

        todo = [t for t in dict.fromkeys(texts) if t not in self._qcache]
        if todo:
            if len(self._qcache) > 20_000:
                self._qcache.clear()
            self._qcache.update(zip(todo, embed(todo, self.embedder)))
        return torch.stack([self._qcache[t] for t in texts]) if texts else torch.zeros(0, int(self.meta["dim"]))

    def counterfactual(self, host: Any) -> nn.Module:
        memo = host._ew_cache.setdefault("serac_cf", {})
        key = (self.path, self.id)
        if key not in memo:
            if trained_on_other_base(self.meta.get("info", {}), host):
                warnings.warn(f"SERAC artifact {self.path} was trained on another base model; its counterfactual "
                              "delta is applied to this model's weights", stacklevel=3)
            cf = clone_base(host)
            fold_delta(cf, self.cf_parts)
            memo[key] = cf
        return memo[key]


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float) -> SeracArtifact:
    from safetensors.torch import load_file

    meta = json.loads((Path(path) / ARTIFACT_FILES[1]).read_text(encoding="utf-8"))
    return SeracArtifact(path, meta, load_file(str(Path(path) / ARTIFACT_FILES[0])))


def load_artifact(path: str | os.PathLike) -> SeracArtifact:
    """A trained artifact (memoised per process by path and file time)."""
    p = Path(path)
    f = p / ARTIFACT_FILES[0]
    if not f.is_file() or not (p / ARTIFACT_FILES[1]).is_file():
        raise FileNotFoundError(f"{p} is not a trained SERAC artifact (no {ARTIFACT_FILES[0]} / {ARTIFACT_FILES[1]}); "
                                "train one with `editwrap train serac --data ... --out DIR`")
    return _load_cached(str(p.resolve()), f.stat().st_mtime)


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
