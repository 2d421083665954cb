"""IKE (Zheng et al. 2023, "Can We Edit Factual Knowledge by In-Context Learning?") and ICE.

IKE edits nothing in the weights: the edit is a :class:`~editwrap.entries.prompt.PromptEntry`
holding the new fact(s) plus k demonstrations retrieved from a pool of training records by
sentence-embedding similarity. Each pool record ``(p, t)`` gives three kinds of demonstrations,
as in the paper and EasyEdit's ``encode_ike_facts``:

* copy   ``New Fact: p t\nPrompt: p t``
* update ``New Fact: p t\nPrompt: <rephrase of p> t``
* retain ``New Fact: p t\nPrompt: <unrelated prompt> <its own answer>``

The query ``New Fact: p t\nPrompt: p`` is embedded with all-MiniLM-L6-v2 and the k nearest pool
sentences (dot product of unit vectors, highest first, as EasyEdit) become the demonstrations.
ICE (``method="ice"``) is the same prompt with no demonstrations: EasyEdit's IKE with
``use_icl_examples: False``.

The entry only acts through the text helpers (``generate_text``, ``loglikelihood``); raw
``forward(input_ids)`` is unchanged.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Sequence

import torch

from ...entries.prompt import PromptEntry, check_fits, format_context
from ...facts import Fact
from .hparams import POOL_ENV, IkeHparams
from ...stack import Edit
from ..base import MethodBase, register_method

__all__ = ["Ike", "Ice", "demonstrations", "load_pool"]


def _new_fact(f: Fact) -> str:
    return f"{f.text_prompt} {f.target_new.strip()}"


def demonstrations(f: Fact, kinds: Sequence[str]) -> list[str]:
    """The IKE demonstration sentences one training record contributes."""
    nf = _new_fact(f)
    out = []
    if "copy" in kinds:
        out.append(f"New Fact: {nf}\nPrompt: {nf}\n\n")
    if "update" in kinds:
        out += [f"New Fact: {nf}\nPrompt: {r} {f.target_new.strip()}\n\n" for r in f.rephrase]
    if "retain" in kinds:
        out += [f"New Fact: {nf}\nPrompt: {p.prompt} {p.answer}\n\n" for ps in f.locality.values() for p in ps]
    return out


@functools.lru_cache(maxsize=4)
def _pool_cached(path: str, mtime: float, n: int | None, kinds: tuple[str, ...], embedder: str | None
                 ) -> tuple[list[str], list[str], torch.Tensor]:
    from ...ops.embed import embed
    from ...records import read_fact_records

    facts = list(read_fact_records(path, n=n, skip_malformed=True))
    if not facts:
        raise ValueError(f"IKE pool {path} holds no usable edit records")
    sents, owners = [], []
    for f in facts:
        for s in demonstrations(f, kinds):
            sents.append(s)
            owners.append(f.text_prompt)
    return sents, owners, embed(sents, embedder)


def load_pool(hp: IkeHparams) -> tuple[list[str], list[str], torch.Tensor]:
    """(sentences, prompt of the record each came from, unit embeddings) for ``hp.pool``."""
    path = hp.pool or os.environ.get(POOL_ENV)
    if not path:
        raise ValueError(
            "IKE needs a pool of training records to retrieve demonstrations from: pass pool='path/to/train.json' "
            f"or a dataset name (e.g. zsre_mend:train, docs/data.md) or set ${POOL_ENV}; use method='ice' (or k=0) "
            "for none")
    from ...hub import resolve_data

    p = resolve_data(path)  # a file, or a dataset name such as zsre_mend:train
    if not p.is_file():
        raise FileNotFoundError(f"IKE pool file {p} does not exist")
    return _pool_cached(str(p.resolve()), p.stat().st_mtime, hp.pool_n, tuple(hp.demo_kinds), hp.embedder)


def retrieve(facts: Sequence[Fact], hp: IkeHparams) -> tuple[list[str], list[float]]:
    """Top-k pool demonstrations for the facts (the first fact's query; more facts share them)."""
    from ...ops.embed import embed

    sents, owners, E = load_pool(hp)
    queries = [f"New Fact: {_new_fact(f)}\nPrompt: {f.text_prompt}\n\n" for f in facts]
    q = embed(queries, hp.embedder)
    scores = (q @ E.T).max(0).values  # a pool sentence counts by its best match over the facts
    if hp.exclude_same_prompt:
        banned = {f.text_prompt for f in facts}
        mask = torch.tensor([o in banned for o in owners])
        scores = scores.masked_fill(mask, float("-inf"))
    k = min(hp.k, int(torch.isfinite(scores).sum()))
    top = torch.topk(scores, k)
    return [sents[i] for i in top.indices.tolist()], [round(float(s), 4) for s in top.values]


class _InContext(MethodBase):
    family = "in-context"
    Hparams = IkeHparams
    default_k = 16

    def default_hparams(self, model: Any) -> IkeHparams:
        return IkeHparams.for_model(model, self.default_k)

    def compute(self, model: Any, facts: Sequence[Fact], hp: IkeHparams) -> Edit:
        t0 = time.time()
        demos, scores = retrieve(facts, hp) if hp.k > 0 else ([], [])
        entry = PromptEntry([_new_fact(f) for f in facts], demos)
        longest = max(facts, key=lambda f: len(f.text_prompt))
        n = check_fits(model, format_context(demos, entry.new_facts, longest.text_prompt), hp.answer_budget,
                       what=f"the {self.name.upper()} prompt ({len(demos)} demonstrations)")
        info = {"seconds": round(time.time() - t0, 3), "context_tokens": n, "demo_scores": scores}
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)


@register_method
class Ike(_InContext):
    name = "ike"
    display_name = "IKE"
    records_field = "pool"
    reference_row = "ice"
    default_k = 16
    suites = ("external-zsre",)


@register_method
class Ice(_InContext):
    name = "ice"
    display_name = "ICE"
    rank = 1
    default_k = 0
    suites = ("external-zsre",)
    knowedit_reference = {
        "recent": {"Edit Succ.": 60.74, "Portability": 36.93, "Locality": 33.34, "Fluency": 531.01},
        "zsre": {"Edit Succ.": 66.01, "Portability": 63.94, "Locality": 23.14, "Fluency": 541.14},
        "wikibio": {"Edit Succ.": 95.53, "Locality": 47.90, "Fluency": 632.92},
        "counterfact": {"Edit Succ.": 69.83, "Portability": 45.32, "Locality": 32.38, "Fluency": 547.22},
        "convsent": {"Edit Succ.": 52.78, "Locality": 49.73, "Fluency": 621.45},
        "sanitation": {"Edit Succ.": 72.50, "Locality": 56.58, "Fluency": 794.15},
    }
