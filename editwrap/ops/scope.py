"""Input scopes for weight edits: which stored edit (if any) a sequence belongs to.

A scoped edit carries the sentence embeddings of the prompts it was made for. When a forward
pass starts, the router embeds each row's text (its real tokens, decoded) and gives the row the
one scope whose best stored prompt is most similar to it, if that similarity reaches the scope's
threshold; rows with no such scope get none. Side-car hooks then apply a scoped delta only to
the rows routed to it, with the same per-row masks edit sets use (:mod:`editwrap.sets`).

The decision is taken on a forward that starts a sequence (no KV cache, or an empty one) and kept
for the KV-cached steps that continue it, so ``generate`` routes on the prompt and every generated
token sees the prompt's edit. It is kept per thread: concurrent requests each route their own rows.
"""
from __future__ import annotations

import contextlib
import math
import re
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from .hooks import forward_root, padding_rows

__all__ = ["route_as", "routed_texts", "without_subject", "ScopeRouter", "scope_router", "drop_router",
           "load_embedder_named", "best_scopes", "choose_threshold", "routed_share", "as_routed"]


#: texts to route the rows of the forwards inside :func:`route_as` on, instead of their own tokens
_ROUTE_AS: ContextVar[tuple[str, ...] | None] = ContextVar("editwrap_route_as", default=None)


@contextlib.contextmanager
def route_as(texts: Sequence[str]) -> Iterator[None]:
    """Route each batch row of the forwards run inside on ``texts[row]`` instead of its own text.

    A teacher-forced forward holds prompt + answer, but the edit is meant for the prompt: scoring
    code that knows where the prompt ends (the evaluation metrics, ``loglikelihood``) routes on the
    prompt, as ``generate`` does. Forwards whose batch size differs route on their own text."""
    token = _ROUTE_AS.set(tuple(texts))
    try:
        yield
    finally:
        _ROUTE_AS.reset(token)


def routed_texts() -> tuple[str, ...] | None:
    """The texts :func:`route_as` names for the forward in progress (None outside it)."""
    return _ROUTE_AS.get()


def best_scopes(sims: torch.Tensor, owners: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Per row of ``sims`` (B, P: similarity to each stored prompt), the index of the scope whose
    best prompt is most similar, or -1 where that similarity is below the scope's threshold.
    ``owners`` (P,) maps each prompt to its scope; ``thresholds`` (S,) one value per scope."""
    n = int(thresholds.numel())
    if n == 0 or sims.numel() == 0:
        return torch.full((sims.shape[0],), -1, dtype=torch.long)
    per = torch.full((sims.shape[0], n), -2.0, dtype=sims.dtype)
    per = per.scatter_reduce(1, owners.expand(sims.shape[0], -1), sims, reduce="amax")
    best, idx = per.max(1)
    return torch.where(best >= thresholds[idx], idx, torch.full_like(idx, -1))


@dataclass
class _Scope:
    keys: torch.Tensor  # (n, d) unit-norm embeddings of the stored prompts (relation match: subject removed)
    threshold: float
    subjects: list[str | None]  # per stored prompt: its subject (relation match) or None (whole-prompt match)


def _subject_pattern(subject: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + re.escape(subject.strip()) + r"(?!\w)", re.IGNORECASE)


def _strip(pattern: re.Pattern, text: str) -> str:
    return " ".join(pattern.sub(" ", text).split())


def as_routed(tok: Any, text: str) -> str:
    """``text`` as the router sees it: tokenised and decoded without special tokens (the router
    decodes a forward's token ids, so stored prompts and offline checks go through the same step)."""
    return tok.decode(tok(text)["input_ids"], skip_special_tokens=True)


def without_subject(text: str, subject: str | None) -> str:
    """``text`` with each occurrence of ``subject`` removed: what is asked about it (the relation)."""
    return _strip(_subject_pattern(subject), text) if subject else text


@dataclass
class _Routing:
    rows: list[str | None] = field(default_factory=list)  # per batch row: its scope key or None


class ScopeRouter:
    """The scopes on one model and the current forward's per-row decision (per thread)."""

    def __init__(self, host: nn.Module | None, embed: Callable[[Sequence[str]], torch.Tensor], embedder: str) -> None:
        self.host = host
        self.embed = embed
        self.embedder = embedder
        self.scopes: dict[str, _Scope] = {}
        self._table: tuple | None = None
        self._local = threading.local()
        self._handle: Any = None

    # -- scopes ----------------------------------------------------------------------------------
    def add(self, key: str, keys: torch.Tensor, threshold: float,
            subjects: Sequence[str | None] | None = None) -> None:
        subj = list(subjects) if subjects is not None else [None] * keys.shape[0]
        if len(subj) != keys.shape[0]:
            raise ValueError(f"scope {key}: {keys.shape[0]} prompt embeddings but {len(subj)} subjects")
        self.scopes[key] = _Scope(keys.float(), float(threshold), subj)
        self._table = None
        if self._handle is None and self.host is not None:  # no host: routing texts only (calibration)
            self._handle = forward_root(self.host).register_forward_pre_hook(self._pre, with_kwargs=True)

    def discard(self, key: str) -> None:
        self.scopes.pop(key, None)
        self._table = None
        if not self.scopes and self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _stacked(self) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Names, stacked prompt embeddings, their owners, thresholds, which prompts match whole, and
        the relation-match prompts by subject: rebuilt only when the scopes change."""
        if self._table is None:
            names = list(self.scopes)
            keys = [self.scopes[k].keys for k in names]
            owners = [torch.full((k.shape[0],), i, dtype=torch.long) for i, k in enumerate(keys)]
            by_subject: dict[str, tuple[re.Pattern, list[int]]] = {}
            p = 0
            for k in names:
                for s in self.scopes[k].subjects:
                    if s:
                        by_subject.setdefault(s.lower(), (_subject_pattern(s), []))[1].append(p)
                    p += 1
            self._table = (names, torch.cat(keys) if keys else torch.zeros(0, 0),
                           torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long),
                           torch.tensor([self.scopes[k].threshold for k in names]),
                           torch.tensor([s is None for k in names for s in self.scopes[k].subjects], dtype=torch.bool),
                           by_subject)
        return self._table

    def similarities(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, P) similarity of each text to each stored prompt: whole prompt against whole text, or
        (relation match) the prompt without its subject against the text without it, only where the
        text names that subject (-2 where it does not)."""
        names, keys, _, _, whole, by_subject = self._stacked()
        sims = torch.full((len(texts), keys.shape[0]), -2.0)
        if not texts or not names:
            return sims
        if bool(whole.any()):
            sims[:, whole] = self.embed(list(texts)).float() @ keys[whole].T
        for subject, (pattern, cols) in by_subject.items():
            rows = [b for b, t in enumerate(texts) if pattern.search(t)]
            if rows:
                q = self.embed([_strip(pattern, texts[b]) for b in rows]).float()
                sims[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = q @ keys[cols].T
        return sims

    def route_texts(self, texts: Sequence[str]) -> list[str | None]:
        """The scope key each text is routed to (None: no scope)."""
        names, _, owners, thr, _, _ = self._stacked()
        if not texts or not names:
            return [None] * len(texts)
        idx = best_scopes(self.similarities(texts), owners, thr)
        return [names[i] if i >= 0 else None for i in idx.tolist()]

    def rows(self) -> list[str | None]:
        """The current forward's decision (empty outside a routed forward)."""
        r = getattr(self._local, "routing", None)
        return r.rows if r is not None else []

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Route no row inside (this thread): a scoped edit is computed on the model without the
        other scoped edits, since at inference its own prompts reach it alone."""
        prev = getattr(self._local, "suspended", False)
        self._local.suspended = True
        try:
            yield
        finally:
            self._local.suspended = prev

    def _pre(self, _m: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if getattr(self._local, "suspended", False):
            self._local.routing = _Routing([None] * (ids.shape[0] if isinstance(ids, torch.Tensor) else 0))
            return
        cache = next((kwargs[k] for k in ("past_key_values", "cache") if kwargs.get(k) is not None), None)
        length = getattr(cache, "get_seq_length", None)
        continues = bool(length is not None and length() > 0)
        prev = getattr(self._local, "routing", None)
        if continues and prev is not None and isinstance(ids, torch.Tensor) and len(prev.rows) == ids.shape[0]:
            return  # a KV-cached step: keep the routing of the forward that started the sequence
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or continues:
            self._local.routing = _Routing([None] * (ids.shape[0] if isinstance(ids, torch.Tensor) else 0))
            return  # no token ids (inputs_embeds) or a cache we did not route: no scoped edit applies
        over = _ROUTE_AS.get()
        if over is not None and len(over) == ids.shape[0]:
            self._local.routing = _Routing(self.route_texts(list(over)))
            return
        real = padding_rows(kwargs.get("attention_mask"), ids).bool()  # padding is not part of the text
        tok = self.host.tokenizer
        texts = [tok.decode(ids[b][real[b]].tolist(), skip_special_tokens=True) for b in range(ids.shape[0])]
        self._local.routing = _Routing(self.route_texts(texts))

    def row_mask(self, key: str, x: torch.Tensor) -> bool | torch.Tensor:
        """``False`` (no row routed to ``key``) or a (B, 1, …) float mask for an activation ``x``."""
        rows = self.rows()
        if not rows or len(rows) != x.shape[0] or key not in rows:
            return False
        m = torch.tensor([r == key for r in rows], dtype=torch.float32, device=x.device)
        return m.view(-1, *([1] * (x.dim() - 1)))


def scope_router(host: Any, embedder: str, create: bool = False) -> ScopeRouter | None:
    """The host's router (made on first use with the named embedder; one embedder per model)."""
    r = host.__dict__.get("_ew_scope_router")
    if r is None and create:
        r = host.__dict__["_ew_scope_router"] = ScopeRouter(host, load_embedder_named(embedder), embedder)
    if r is not None and r.embedder != embedder:
        raise ValueError(f"scope_embedder={embedder!r}: the scoped edits already on this model use "
                         f"{r.embedder!r}; one model routes with one embedder, so edit with "
                         f"scope_embedder={r.embedder!r}")
    return r


def load_embedder_named(embedder: str) -> Callable[[Sequence[str]], torch.Tensor]:
    """``"minilm"``: the packaged all-MiniLM-L6-v2; anything else: a sentence-transformers model directory."""
    from .embed import load_embedder

    return load_embedder(None if embedder == "minilm" else embedder)


def drop_router(host: Any) -> None:
    r = host.__dict__.get("_ew_scope_router")
    if r is not None and not r.scopes:
        host.__dict__.pop("_ew_scope_router", None)


def choose_threshold(positive: torch.Tensor, negative: torch.Tensor, max_false: float = 0.05,
                     groups: torch.Tensor | None = None) -> dict[str, float]:
    """The threshold that routes the most ``positive`` similarities (rephrasings retrieving their
    own edit) while routing at most ``max_false`` of the ``negative`` ones (unrelated probes
    retrieving any edit): the smallest ``t`` with ``routed(t) <= max_false``.

    ``routed(t)`` is the share of negatives at or above ``t``; with ``groups`` (the record each
    negative belongs to) it is the mean over records of each record's share, as KnowEdit's Locality
    averages per record (a record with one probe weighs as much as one with ten)."""
    neg, w = negative.double(), _weights(negative, groups)
    order = neg.argsort(descending=True)
    over = (w[order].cumsum(0) > max_false + 1e-9).nonzero()
    t = float(neg[order[over[0, 0]]]) + 1e-6 if over.numel() else float(neg.min())
    t = math.ceil(t * 1e4) / 1e4  # rounded up: a rounded-down value could route the probe it must exclude
    return {"threshold": t, "positive_routed": float((positive >= t).float().mean()),
            "negative_routed": routed_share(negative, t, groups)}


def _weights(negative: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    if groups is None:
        return torch.full(negative.shape, 1.0 / max(negative.numel(), 1), dtype=torch.float64)
    _, inv, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / (counts[inv].double() * counts.numel())


def routed_share(negative: torch.Tensor, threshold: float, groups: torch.Tensor | None = None) -> float:
    """Share of ``negative`` similarities at or above ``threshold``; with ``groups``, the mean over
    groups (records) of each group's share (:func:`choose_threshold`)."""
    return float((_weights(negative, groups) * (negative.double() >= threshold).double()).sum())
