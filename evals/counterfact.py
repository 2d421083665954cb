"""The ROME/MEMIT/AlphaEdit evaluation protocol (``protocol="memit"`` of the runner).

The papers that report lifelong editing on CounterFact and ZsRE (ROME, MEMIT, AlphaEdit) score
with kmeng01/memit ``experiments/py/eval_utils_counterfact.py`` / ``eval_utils_zsre.py`` and
``experiments/summarize.py``. Per record, on the edited model:

* ``nll(prompt, target)``: mean negative log-probability of the target's tokens after
  ``prompt + " "`` (the reference's ``probs``; a lower NLL = a more probable target);
* Efficacy / Paraphrase **Score**: share of the rewrite / paraphrase prompts with
  ``nll(new) < nll(true)``; **Magnitude**: mean of ``exp(-nll(new)) - exp(-nll(true))``;
* Neighborhood Score: share of neighbourhood prompts with ``nll(answer) < nll(new)``; Magnitude:
  mean ``exp(-nll(answer)) - exp(-nll(new))``. In CounterFact the answer is the edited fact's true
  object (the reference's ``target_true``); for other files it is the probe's own answer;
* token accuracy (``compute_rewrite_quality_zsre``): per target token, whether the argmax
  prediction after the prompt and the target's earlier tokens is that token; averaged over all
  tokens of a record's rewrite / paraphrase prompts (target = the new object) and neighbourhood
  prompts (target = the probe's answer);
* generation entropy: :func:`~editwrap.evals.metrics.n_gram_entropy` of top-5 samples up to 100
  tokens (prompt included) from the record's ``generation_prompts`` (:func:`generate_fast`, the
  reference's sampler); a file without generation prompts samples from the edit prompt, as
  EasyEdit's fluency does. Only with ``with_fluency`` (sampling is the slow part);
* consistency: TF-IDF cosine (:class:`~editwrap.evals.tfidf.Tfidf`) between the joined samples and
  the record's reference texts, which only ROME's data folder has (``attribute_snippets.json``
  beside ``counterfact.json``, matched by ``relation_id`` and ``target_new.id``); IDF from the
  reference's ``idf.npy`` + ``tfidf_vocab.json`` there, else fit on the snippets (the reference's
  own fallback, ``dsets/tfidf_stats.py``).

Summaries are means over records x100, like ``summarize.py`` (Score = harmonic mean of the three
Scores). The same numbers are taken on the unedited model (``memit_pre``), the papers' "Pre-edited"
row. The runner's KnowEdit metrics and generated answers are kept in the same lines.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from editwrap.facts import Fact

from .batching import RecordGen, Request
from .datasets import _read, folder_file
from editwrap.hub import is_data_name, resolve_data
from .measure import Scorer, _nan_to_none
from .metrics import _scored, generate_fast, n_gram_entropy
from .counterfact_summary import summarize_counterfact
from .tfidf import Tfidf

__all__ = ["PROTOCOLS", "CounterfactRecord", "counterfact_items", "target_scores", "sample_texts",
           "CounterfactScorer", "summarize_counterfact", "memit_table", "memit_report", "detect_dataset"]

PROTOCOLS = ("knowedit", "memit")
GROUPS = ("rewrite", "paraphrase", "neighborhood")
ROWS = ("Efficacy Score", "Paraphrase Score", "Neighborhood Score", "Score", "Efficacy Magnitude",
        "Paraphrase Magnitude", "Neighborhood Magnitude", "Rewrite acc.", "Paraphrase acc.",
        "Neighborhood acc.", "Generation entropy", "Consistency")


class CounterfactRecord(BaseModel):
    """A fact with what only ROME's CounterFact file carries: generation prompts and the reference
    texts of its ``(relation_id, target_new.id)`` for consistency."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fact: Fact
    generation_prompts: list[str] = Field(default_factory=list)
    reference_texts: list[str] = Field(default_factory=list)


def _rewrite(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    rw = rec.get("requested_rewrite") or {}
    return rw[0] if isinstance(rw, list) and rw else rw


def counterfact_items(items: Sequence[Any], dataset: str,
                      data: Any) -> tuple[list[CounterfactRecord], Tfidf | None, str | bool]:
    """Wrap loaded facts as :class:`CounterfactRecord`; for ROME's format read their generation
    prompts and, from the data file's folder, the consistency reference texts and TF-IDF statistics.
    Returns (records, vectorizer or None, what consistency uses: a description, or False)."""
    if dataset != "counterfact_rome":
        return [CounterfactRecord(fact=f) for f in items], None, False
    path = resolve_data(data)
    path = folder_file(path, dataset) if path.is_dir() else path
    raw = _read(path)[:len(items)]  # load_dataset kept the first records, none skipped
    snippets: dict[tuple[str, str], list[str]] = {}
    snip_file = path.parent / "attribute_snippets.json"
    if snip_file.is_file():
        for el in json.loads(snip_file.read_text(encoding="utf-8")):
            texts = [s["text"] for s in el.get("samples", []) if isinstance(s.get("text"), str)]
            snippets.setdefault((str(el.get("relation_id")), str(el.get("target_id"))), []).extend(texts)
    idf, vocab = path.parent / "idf.npy", path.parent / "tfidf_vocab.json"
    if not snippets:
        tfidf, used = None, False
    elif idf.is_file() and vocab.is_file():
        tfidf, used = Tfidf.load(idf, vocab), "attribute_snippets.json; IDF from idf.npy + tfidf_vocab.json"
    else:
        tfidf = Tfidf.fit(t for texts in snippets.values() for t in texts)
        used = "attribute_snippets.json; IDF fit on its texts"
    out = []
    for f, rec in zip(items, raw):
        rw = _rewrite(rec)
        key = (str(rw.get("relation_id")), str((rw.get("target_new") or {}).get("id")))
        gens = [g for g in rec.get("generation_prompts") or [] if isinstance(g, str) and g.strip()]
        out.append(CounterfactRecord(fact=f, generation_prompts=gens, reference_texts=snippets.get(key, [])))
    return out, tfidf, used


def target_scores(model: Any, tok: Any, prompts: Sequence[str], targets: Sequence[str],
                  batch_size: int = 16) -> list[tuple[float, list[int]]]:
    """Per (prompt, target): the mean NLL of the target tokens of ``prompt + " " + target`` and,
    per target token, 1 if the argmax prediction is that token (NaN and [] for no target token)."""
    out = []
    for tgt, rows in _scored(model, tok, prompts, [p + " " + t for p, t in zip(prompts, targets)], batch_size):
        if not tgt:
            out.append((math.nan, []))
            continue
        ids = torch.tensor(tgt, dtype=torch.long, device=rows.device)
        lp = rows.log_softmax(-1).gather(-1, ids[:, None])[:, 0]
        out.append((float(-lp.mean()), (rows.argmax(-1) == ids).long().tolist()))
    return out


def sample_texts(model: Any, tok: Any, prompts: Sequence[str], max_out_len: int = 100, seed: int = 0,
                 batch_size: int = 16) -> list[str]:
    """The reference's generation test: :func:`generate_fast` texts (top-5, ``max_out_len`` tokens
    including the prompt), one prompt at a time (``batch_size`` is unused)."""
    return generate_fast(model, tok, prompts, max_out_len, seed=seed)


class CounterfactScorer(Scorer):
    """:class:`Scorer` whose items are :class:`CounterfactRecord`: each line holds the KnowEdit record
    of the fact plus ``memit`` (this module's numbers after the edit) and ``memit_pre`` (before)."""

    def __init__(self, model: Any, *, tfidf: Tfidf | None = None, **kw: Any):
        super().__init__(model, **kw)
        self.tfidf = tfidf

    def _pre(self, item: CounterfactRecord) -> RecordGen:
        rec = yield from super()._pre(item.fact)
        rec["memit"] = yield from self._memit(item)
        return rec

    def _post(self, item: CounterfactRecord, pre: dict[str, Any]) -> RecordGen:
        rec = yield from self._fact(item.fact, pre)
        rec["memit"] = yield from self._memit(item)
        rec["memit_pre"] = pre.get("memit")
        return _nan_to_none(rec)

    def _memit(self, item: CounterfactRecord) -> RecordGen:
        f = item.fact
        rows: list[tuple[str, str, str, str]] = []  # (group, prompt, target, "new" | "true")
        for group, prompts in (("rewrite", [f.text_prompt]), ("paraphrase", f.rephrase)):
            for p in prompts:
                rows.append((group, p, f.target_new, "new"))
                if f.ground_truth:
                    rows.append((group, p, f.ground_truth, "true"))
        for probes in f.locality.values():
            for pr in probes:
                rows += [("neighborhood", pr.prompt, f.target_new, "new"),
                         ("neighborhood", pr.prompt, pr.answer, "true")]
        reqs = [Request(target_scores, [r[1] for r in rows], ([r[2] for r in rows],))]
        if self.with_fluency:
            reqs.append(Request(sample_texts, item.generation_prompts or [f.text_prompt], (),
                                {"max_out_len": self.fluency_tokens, "seed": self.fluency_seed}))
        got = yield reqs
        rec: dict[str, Any] = {}
        for (group, _, _, role), (nll, hits) in zip(rows, got[0]):
            slot = rec.setdefault(group, {"nll_new": [], "nll_true": [], "hits": []})
            slot["nll_" + role].append(nll)
            if (role == "new") == (group != "neighborhood"):  # accuracy of the expected answer
                slot["hits"].append(hits)
        if self.with_fluency:
            texts = got[1]
            rec.update(ngram_entropy=n_gram_entropy(texts), texts=texts)
            if self.tfidf is not None and item.reference_texts:
                rec["consistency"] = self.tfidf.similarity(" ".join(texts), " ".join(item.reference_texts))
        return rec


# ---- summaries ----------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.2f}"


def _table(cols: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Rows = the metrics any column has, columns = (heading, summary) pairs."""
    lines = ["| metric | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {row} | " + " | ".join(_fmt(s.get(row)) for _, s in cols) + " |"
              for row in ROWS if any(s.get(row) is not None for _, s in cols)]
    return "\n".join(lines)


def memit_table(summary: Mapping[str, Any]) -> str:
    """One run: rows = the protocol's metrics, columns = unedited model and each checkpoint (or the
    edited model)."""
    m = summary.get("metrics") or {}
    cols = [("unedited", m.get("memit_pre") or {})]
    cps = summary.get("checkpoints") or {}
    cols += [(f"{c} edits", s.get("memit") or {}) for c, s in sorted(cps.items(), key=lambda kv: int(kv[0]))] \
        if cps else [("edited", m.get("memit") or {})]
    sampled = " Generation entropy: top-5 samples to 100 tokens, prompt included." if summary.get("fluency") else ""
    return f"CounterFact protocol of ROME/MEMIT/AlphaEdit (x100; docs/counterfact.md).{sampled}\n\n" + _table(cols)


def memit_report(runs: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> str:
    """Several runs (``protocol == "memit"``) per dataset: rows = metrics, columns = unedited and each
    run's last checkpoint."""
    parts = []
    picked = [(lab, r) for lab, r in zip(labels, runs) if r.get("protocol") == "memit"]
    for ds in sorted({r["dataset"] for _, r in picked}):
        rs = [(lab, r) for lab, r in picked if r["dataset"] == ds]
        base = max((r for _, r in rs), key=lambda r: (r.get("metrics") or {}).get("n") or 0)
        bm = base.get("metrics") or {}
        cols = [(f"unedited (n={bm.get('n')})", bm.get("memit_pre") or {})]
        cols += [(f"{lab} ({r.get('mode')}, n={(r.get('metrics') or {}).get('n')})",
                  (r.get("metrics") or {}).get("memit") or {})
                 for lab, r in rs]
        parts.append(f"### {ds}: CounterFact protocol\n\n" + _table(cols))
    return "\n\n".join(parts)


def detect_dataset(data: Any) -> str:
    """The ``--dataset`` format of a data file or name, for ``editwrap eval counterfact``."""
    from .datasets import detect_format
    from editwrap.hub import lookup

    if is_data_name(data) and ":" in str(data):
        return lookup(str(data)).dataset
    path = Path(resolve_data(data))
    if path.is_dir():
        raise ValueError(f"--data {data} is a folder: give --dataset (counterfact_rome, counterfact_easyedit, ...)")
    return detect_format(_read(path))
