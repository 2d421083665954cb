"""Training a SERAC artifact on a dataset's train split: scope classifier + counterfactual delta.

1. **Scope classifier.** Every text (edit prompts, rephrases, locality prompts) is embedded once
   with MiniLM. In-scope pairs: (prompt, prompt) and (prompt, each rephrase); out-of-scope pairs:
   (prompt, each of its locality prompts) and ``neg_per_record`` random (prompt, other record's
   prompt or rephrase). :class:`~.artifact.ScopeClassifier` is trained full-batch with
   class-balanced BCE; accuracy on held-out records (``val_fraction``) is reported.
2. **Counterfactual model.** A private copy of the base weights with trainable low-rank deltas
   (``x V Uᵀ`` added to each MLP output projection, U=0 at init) is trained for ``cf_steps`` on
   ``New Fact: p t\\nPrompt: q`` -> ``t`` for q in {p, rephrases} (batch order = f(seed, step)).
   ``cf_steps=0`` keeps the base model with the edit in context (no trained delta).

The artifact (``serac.safetensors`` + ``serac.json``) is written atomically at the end.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import torch

from ...facts import Fact
from ...arch import arch_of
from .hparams import SeracTrainConfig
from ...ops.fingerprint import checkpoint_probe
from ...ops.hooks import patch_output
from ...ops.tokens import batch_encode, target_ids
from editwrap.paths import portable_path
from .artifact import ARTIFACT_FILES, ScopeClassifier, cf_text, clone_base, file_hash

__all__ = ["train_serac", "scope_pairs", "train_classifier"]


def _fact_text(f: Fact) -> str:
    return f"{f.text_prompt} {f.target_new.strip()}"


def scope_pairs(records: Sequence[Fact], neg_per_record: int, seed: int) -> list[tuple[str, str, float]]:
    """(edit prompt, input, 1.0 in scope / 0.0 out of scope) pairs from training records."""
    rng = random.Random(seed)
    others = [(i, t) for i, f in enumerate(records) for t in [f.text_prompt, *f.rephrase]]
    pairs: list[tuple[str, str, float]] = []
    for i, f in enumerate(records):
        p = f.text_prompt
        pairs += [(p, q, 1.0) for q in [p, *f.rephrase]]
        pairs += [(p, pr.prompt, 0.0) for ps in f.locality.values() for pr in ps]
        if len(records) > 1:
            for _ in range(neg_per_record):
                j, t = rng.choice(others)
                while j == i:
                    j, t = rng.choice(others)
                pairs.append((p, t, 0.0))
    return pairs


def train_classifier(pairs: Sequence[tuple[str, str, float]], emb: dict[str, torch.Tensor], cfg: SeracTrainConfig,
                     dim: int) -> tuple[ScopeClassifier, list[float]]:
    torch.manual_seed(cfg.seed)
    clf = ScopeClassifier(dim, cfg.hidden)
    u = torch.stack([emb[a] for a, _, _ in pairs])
    v = torch.stack([emb[b] for _, b, _ in pairs])
    y = torch.tensor([c for _, _, c in pairs])
    pos = float(y.sum())
    w = torch.where(y > 0, (len(y) - pos) / max(pos, 1.0), 1.0)  # class-balanced
    opt = torch.optim.Adam(clf.parameters(), lr=cfg.cls_lr)
    hist = []
    for _ in range(cfg.cls_steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(clf.pair_logits(u, v), y, weight=w)
        loss.backward()
        opt.step()
        hist.append(round(float(loss.detach()), 5))
    clf.eval()
    return clf, hist


def _accuracy(clf: ScopeClassifier, pairs: Sequence[tuple[str, str, float]], emb: dict[str, torch.Tensor],
              thr: float) -> dict[str, float | None]:
    if not pairs:
        return {"acc": None, "in_scope_recall": None, "out_scope_recall": None, "pairs": 0}
    with torch.no_grad():
        p = torch.sigmoid(clf.pair_logits(torch.stack([emb[a] for a, _, _ in pairs]),
                                          torch.stack([emb[b] for _, b, _ in pairs])))
    y = torch.tensor([c for _, _, c in pairs]) > 0
    pred = p >= thr

    def rate(mask: torch.Tensor) -> float | None:
        return round(float((pred[mask] == y[mask]).float().mean()), 4) if mask.any() else None

    return {"acc": rate(torch.ones_like(y)), "in_scope_recall": rate(y), "out_scope_recall": rate(~y),
            "pairs": len(pairs)}


def _cf_examples(records: Sequence[Fact]) -> list[tuple[str, str]]:
    return [(cf_text(_fact_text(f), q), f.target_new) for f in records for q in [f.text_prompt, *f.rephrase]]


def train_counterfactual(model: Any, records: Sequence[Fact], cfg: SeracTrainConfig, progress: bool = True
                         ) -> tuple[dict[str, dict[str, torch.Tensor]], list[float]]:
    """Low-rank deltas {module: {U, V}} for the counterfactual copy of ``model``."""
    if cfg.cf_steps == 0:
        return {}, []
    arch = arch_of(model)
    layers = cfg.cf_layers if cfg.cf_layers is not None else list(range(max(0, arch.n_layers - 6), arch.n_layers))
    modules = [arch.mlp_out_at(i) for i in layers]
    cf = clone_base(model)
    from ...entries.delta import is_conv1d
    from ...ops.hooks import get_module

    torch.manual_seed(cfg.seed)
    params: dict[str, dict[str, torch.nn.Parameter]] = {}
    dev = next(cf.parameters()).device
    for m in modules:
        mod = get_module(cf, m)
        out_f, in_f = (mod.weight.shape[1], mod.weight.shape[0]) if is_conv1d(mod) else mod.weight.shape
        params[m] = {"U": torch.nn.Parameter(torch.zeros(out_f, cfg.cf_rank, device=dev)),
                     "V": torch.nn.Parameter(torch.randn(in_f, cfg.cf_rank, device=dev) / in_f ** 0.5)}
    opt = torch.optim.Adam([p for d in params.values() for p in d.values()], lr=cfg.cf_lr)
    data = _cf_examples(records)
    tok = model.tokenizer
    hist: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.cf_steps, desc="train serac (counterfactual)", unit="step", file=sys.stderr)
    for step in range(cfg.cf_steps):
        rng = random.Random(cfg.seed * 100_003 + step)
        batch = [data[rng.randrange(len(data))] for _ in range(cfg.cf_batch_size)]
        tgts = [target_ids(tok, t) for _, t in batch]
        enc = dict(batch_encode(tok, [c + tok.decode(t) for (c, _), t in zip(batch, tgts)], dev))
        labels = torch.full_like(enc["input_ids"], -100)
        for i, t in enumerate(tgts):
            end = int(enc["attention_mask"][i].sum())
            labels[i, end - len(t): end] = torch.tensor(t, device=dev)
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad(), contextlib.ExitStack() as hooks:
            for m, p in params.items():
                hooks.enter_context(patch_output(
                    cf, m, lambda o, x, U=p["U"], V=p["V"]: (o + (x.float() @ V) @ U.T).to(o.dtype)))
            logits = cf(**enc).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                     ignore_index=-100)
            loss.backward()
        opt.step()
        hist.append(round(float(loss.detach()), 5))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(nll=f"{hist[-1]:.3f}")
    if bar is not None:
        bar.close()
    return {m: {k: v.detach().cpu().contiguous() for k, v in p.items()} for m, p in params.items()}, hist


def train_serac(model: Any, records: Sequence[Fact], out_dir: str | os.PathLike, cfg: SeracTrainConfig | None = None,
                *, progress: bool = True, data_name: str = "") -> dict[str, Any]:
    """Train a SERAC artifact for ``model`` on ``records`` and write it to ``out_dir``; returns its info."""
    from safetensors.torch import save_file

    from ...ops.embed import embed

    cfg = cfg or SeracTrainConfig()
    records = [f for f in records if isinstance(f, Fact)]
    if len(records) < 2:
        raise ValueError("SERAC training needs at least two edit records (prompt + target_new)")
    t0 = time.time()
    order = list(range(len(records)))
    random.Random(cfg.seed).shuffle(order)
    n_val = int(len(records) * cfg.val_fraction)
    val = [records[i] for i in order[:n_val]]
    train = [records[i] for i in order[n_val:]]
    tr_pairs = scope_pairs(train, cfg.neg_per_record, cfg.seed)
    va_pairs = scope_pairs(val, cfg.neg_per_record, cfg.seed + 1) if len(val) > 1 else []
    texts = list(dict.fromkeys(t for a, b, _ in tr_pairs + va_pairs for t in (a, b)))
    E = embed(texts, cfg.embedder)
    emb = dict(zip(texts, E))
    clf, cls_hist = train_classifier(tr_pairs, emb, cfg, int(E.shape[1]))
    t_cls = time.time() - t0
    parts, cf_hist = train_counterfactual(model, train, cfg, progress)
    tensors = {f"classifier/{k}": v.detach().cpu().contiguous() for k, v in clf.state_dict().items()}
    tensors.update({f"cf/{m}/{k}": v for m, p in parts.items() for k, v in p.items()})
    info = {"records": len(train), "val_records": len(val), "data": data_name,
            "base_model": portable_path(getattr(model.config, "_name_or_path", None)),
            "base_fingerprint": model.fingerprint() if hasattr(model, "fingerprint") else "",
            "base_checkpoint": checkpoint_probe(model),
            "classifier_train": _accuracy(clf, tr_pairs, emb, cfg.threshold),
            "classifier_val": _accuracy(clf, va_pairs, emb, cfg.threshold),
            "classifier_loss": [cls_hist[0], cls_hist[-1]] if cls_hist else None, "classifier_seconds": round(t_cls, 1),
            "cf_modules": list(parts), "cf_first_nll": cf_hist[0] if cf_hist else None,
            "cf_final_nll": round(sum(cf_hist[-10:]) / len(cf_hist[-10:]), 4) if cf_hist else None,
            "counterfactual": "base + trained low-rank delta" if parts else "base model, edit in context (untrained)",
            "train_seconds": round(time.time() - t0, 1)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    tmp_t = out / f".{ARTIFACT_FILES[0]}.{tag}"
    save_file(tensors, str(tmp_t))
    meta = {"format": "editwrap-serac-1", "config": cfg.model_dump(mode="json"), "dim": int(E.shape[1]),
            "hidden": cfg.hidden, "threshold": cfg.threshold, "embedder": cfg.embedder,
            "artifact_id": file_hash(tmp_t), "info": info}
    tmp_j = out / f".{ARTIFACT_FILES[1]}.{tag}"
    tmp_j.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(tmp_t, out / ARTIFACT_FILES[0])
    os.replace(tmp_j, out / ARTIFACT_FILES[1])
    return info
