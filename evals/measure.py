"""Per-record KnowEdit measurements around one edit: ``pre`` (before the edit is pushed) and ``post``.

:class:`Scorer` turns a dataset item (a :class:`~editwrap.facts.Fact`, a
:class:`~editwrap.evals.datasets.ConvSentRecord` or a Sanitation forget fact) into an EasyEdit-style
metrics record using only :mod:`editwrap.evals.metrics`:

* Fact: ``rewrite_acc``, ``rephrase_acc``, ``portability[key]`` (token accuracy), ``locality[key]``
  (share of answer-position argmax tokens unchanged vs ``pre``), optional ``fluency`` (``fluency_mode``:
  ``"greedy"`` :func:`~editwrap.evals.metrics.fluency`, or ``"easyedit"``
  :func:`~editwrap.evals.metrics.fluency_easyedit`, EasyEdit's sampled generation, seeded with
  ``fluency_seed``).
* ConvSent: ``es`` (:func:`convsent_success`) and ``dd`` (:func:`kl_divergence_locality`).
* Sanitation: ``success`` (the generation contains the target "I don't know.") and
  ``locality["retain"]`` (retain-set generations unchanged vs the starting model).
* Fact, ``generation=True`` (default): also ``generation`` = greedy answers scored by
  :mod:`editwrap.evals.generation`: ``{"rewrite": {"success", "f1", "answer", "answer_pre"},
  "rephrase": {"success", "f1"}, "portability": {key: {"success", "f1"}}, "locality": {key: [1.0|0.0]}}``
  (``answer_pre``: the unedited model's answer to the rewrite prompt). Time spent generating is
  summed in ``Scorer.gen_seconds`` (kept out of the record so records stay deterministic).

Prompts go through ``model._route`` (else ``model._prepare_text``) so text-plane edits (IKE prompts,
SERAC caches routing to a counterfactual model) are seen by the scorer.

``pre_many`` / ``post_many`` give the records of ``pre`` / ``post`` for many items at once: a fact
record's scoring is a generator of metric requests (:mod:`editwrap.evals.batching`), and the
requests of all items are merged into full batches. ``pre``/``post`` are the one-item case.
ConvSent, Sanitation and fluency stay per item (float-valued or long generations; rare in
sequential runs).
"""
from __future__ import annotations

import math
import time
from typing import Any, Sequence

from editwrap.facts import Fact, Probe

from .batching import RecordGen, Request, drive
from .datasets import ConvSentRecord
from .generation import DEFAULT_MARGIN, answer_budget, generate_answers, locality_match, score_answers
from .metrics import (FLUENCY_MODES, answer_tokens, continuation_logprob_dists, convsent_success, fluency,
                      fluency_easyedit, generate_tokens, kl_divergence_locality, locality_score,
                      sanitation_locality, sanitation_success, token_accuracy, token_logprobs)

__all__ = ["Scorer", "item_fact", "result_line"]


def item_fact(item: Any) -> Fact:
    """The Fact to edit with for a dataset item (a record that wraps one, such as ConvSentRecord or
    CounterfactRecord, holds it as ``.fact``)."""
    return item if isinstance(item, Fact) else item.fact


def result_line(index: int, item: Any, source: str, post: dict, **extra: Any) -> dict:
    """One JSONL line of a run: which record, its fact, ``extra`` fields and the post-edit scores."""
    f = item_fact(item)
    line = {"index": index, "dataset": source, "prompt": f.text_prompt, "target_new": f.target_new}
    if f.ground_truth is not None:  # the original answer: error analysis tells partial replacements by it
        line["ground_truth"] = f.ground_truth
    return {**line, **extra, "post": post}


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    return v


class Scorer:
    """Measures items on ``model`` as it is at call time (the caller pushes/pops edits).

    ``sanitation=True``: items are Sanitation forget facts and ``retain`` the dataset-level retain
    probes, whose pre-edit generations are taken once, from the model as it is at the first
    ``pre`` call (the unedited starting model). ``generation``: also score greedy answers of fact
    items (budget = target tokens + ``gen_margin``; ``chat_template`` wraps those prompts, not the
    teacher-forced ones, in the tokenizer's chat template).
    """

    def __init__(self, model: Any, *, with_fluency: bool = False, fluency_tokens: int = 100,
                 fluency_mode: str = "greedy", fluency_seed: int = 0, gen_tokens: int = 20,
                 sanitation: bool = False, retain: Sequence[Probe] = (),
                 batch_size: int = 16, generation: bool = True, gen_margin: int = DEFAULT_MARGIN,
                 chat_template: bool = False):
        self.model, self.tok = model, model.tokenizer
        self.sanitation = sanitation
        if fluency_mode not in FLUENCY_MODES:
            raise ValueError(f"fluency_mode must be one of {', '.join(FLUENCY_MODES)}, got {fluency_mode!r}")
        self.with_fluency, self.fluency_tokens = with_fluency, fluency_tokens
        self.fluency_mode, self.fluency_seed = fluency_mode, fluency_seed
        self.gen_tokens, self.batch_size = gen_tokens, batch_size
        self.generation, self.gen_margin, self.chat_template = generation, gen_margin, chat_template
        self.gen_seconds, self.gen_records = 0.0, 0  # generation time (pre + post) and posts scored
        self.retain = list(retain)
        self._retain_pre: list[list[int]] | None = None

    def prep(self, texts: Sequence[str]) -> list[str]:
        f = getattr(self.model, "_prepare_text", None)
        return [f(t) for t in texts] if f is not None else list(texts)

    def _on(self, fn: Any, texts: Sequence[str], *cols: Sequence[Any], **kw: Any) -> list[Any]:
        """``fn(model, tok, texts, *cols, **kw)`` per model the texts are routed to (``model._route``:
        a SERAC cache sends in-scope inputs to its counterfactual model), results in input order."""
        kw.setdefault("batch_size", self.batch_size)
        route = getattr(self.model, "_route", None)
        if route is None:
            return fn(self.model, self.tok, self.prep(texts), *cols, **kw)
        routed = [route(t) for t in texts]
        groups: dict[int, list[int]] = {}
        for i, (_, m) in enumerate(routed):
            groups.setdefault(id(m), []).append(i)
        out: list[Any] = [None] * len(routed)
        for idx in groups.values():
            res = fn(routed[idx[0]][1], self.tok, [routed[i][0] for i in idx], *[[c[i] for i in idx] for c in cols],
                     **kw)
            for i, v in zip(idx, res):
                out[i] = v
        return out

    def _run(self, req: Request) -> list[Any]:
        """One merged request through :meth:`_on`, rows sorted by length (less padding per batch;
        each row's result does not depend on its batch); generation time goes to ``gen_seconds``."""
        order = sorted(range(len(req.texts)), key=lambda i: len(req.texts[i]))
        t0 = time.time()
        res = self._on(req.fn, [req.texts[i] for i in order], *[[c[i] for i in order] for c in req.cols], **req.kwargs)
        if req.fn is generate_answers:
            self.gen_seconds += time.time() - t0
        out: list[Any] = [None] * len(order)
        for i, v in zip(order, res):
            out[i] = v
        return out

    # ---- before the edit ------------------------------------------------------------------------
    def pre(self, item: Any) -> dict[str, Any]:
        """What ``post`` compares against, measured on the model before the item's edit."""
        return self.pre_many([item])[0]

    def pre_many(self, items: Sequence[Any]) -> list[dict[str, Any]]:
        """``[pre(x) for x in items]``, with the fact records' forwards and generations merged."""
        return drive([self._pre(x) for x in items], self._run)

    def _pre(self, item: Any) -> RecordGen:
        if isinstance(item, ConvSentRecord):  # per record: float results, kept on their own batches
            ctx, rep, _ = item.inner_qa()
            octx, orep = item.outer_qa()
            return {"inner": self._on(token_logprobs, ctx, rep),
                    "outer": self._on(continuation_logprob_dists, octx, orep)}
        if self.sanitation:
            if self._retain_pre is None:
                self._retain_pre = self._generate([p.prompt for p in self.retain])
            return {}
        probes = [(k, p) for k, ps in item.locality.items() for p in ps]
        reqs = [Request(answer_tokens, [p.prompt for _, p in probes], ([p.answer for _, p in probes],))]
        if self.generation:
            reqs.append(self._answers([item.text_prompt, *(p.prompt for _, p in probes)],
                                      [item.target_new, *(p.answer for _, p in probes)]))
        got = yield reqs
        rec: dict[str, Any] = {"locality": {}}
        if self.generation:
            ans, loc = got[1], {}
            for (k, _), a in zip(probes, ans[1:]):
                loc.setdefault(k, []).append(a)
            rec["generation"] = {"rewrite": ans[0], "locality": loc}
        for (k, _), t in zip(probes, got[0]):
            rec["locality"].setdefault(k, []).append(t)
        return rec

    # ---- after the edit -------------------------------------------------------------------------
    def post(self, item: Any, pre: dict[str, Any]) -> dict[str, Any]:
        """The metrics record (JSON-ready; NaN written as null) for an item whose edit is applied."""
        return self.post_many([item], [pre])[0]

    def post_many(self, items: Sequence[Any], pres: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """``[post(x, p) for x, p in zip(items, pres)]``, with the fact records' forwards and
        generations merged into full batches (:mod:`editwrap.evals.batching`): the same records."""
        if len(items) != len(pres):
            raise ValueError(f"{len(items)} items but {len(pres)} pre records")
        return drive([self._post(x, p) for x, p in zip(items, pres)], self._run)

    def _post(self, item: Any, pre: dict[str, Any]) -> RecordGen:
        if isinstance(item, ConvSentRecord):
            rec = self._convsent(item, pre)
        elif self.sanitation:
            rec = self._sanitation(item)
        else:
            rec = yield from self._fact(item, pre)
        if self.with_fluency:  # per record: one long generation each
            prompt = item.question if isinstance(item, ConvSentRecord) else item.text_prompt
            text, m = self.model._route(prompt) if hasattr(self.model, "_route") else (prompt, self.model)
            if self.fluency_mode == "easyedit":  # fluency_tokens = max_out_len, prompt included
                val = fluency_easyedit(m, self.tok, [text], self.fluency_tokens, seed=self.fluency_seed)
            else:
                val = fluency(m, self.tok, [text], self.fluency_tokens)
            rec["fluency"] = {"ngram_entropy": val}
        return _nan_to_none(rec)

    def _fact(self, f: Fact, pre: dict[str, Any]) -> RecordGen:
        """Rewrite, rephrase and portability accuracies, locality tokens and, with ``generation``,
        the greedy answers of all those prompts: requested together, so they batch with other records'."""
        rows: list[tuple[str, str | None, str, str]] = [("rewrite_acc", None, f.text_prompt, f.target_new)]
        rows += [("rephrase_acc", None, r, f.target_new) for r in f.rephrase]
        rows += [("portability", k, p.prompt, p.answer) for k, ps in f.portability.items() for p in ps]
        probes = [(k, p) for k, ps in f.locality.items() for p in ps]
        gen_pre = pre.get("generation") if self.generation else None
        loc_probes = probes if gen_pre is not None else []  # no unedited answers: no generated locality
        reqs = [Request(token_accuracy, [r[2] for r in rows], ([r[3] for r in rows],)),
                Request(answer_tokens, [p.prompt for _, p in probes], ([p.answer for _, p in probes],))]
        if self.generation:
            reqs.append(self._answers([r[2] for r in rows] + [p.prompt for _, p in loc_probes],
                                      [r[3] for r in rows] + [p.answer for _, p in loc_probes]))
        got = yield reqs
        rec: dict[str, Any] = {"rewrite_acc": [], "portability": {}, "locality": {}}
        for (section, key, _, _), a in zip(rows, got[0]):
            if key is None:
                rec.setdefault(section, []).append(a)
            else:
                rec[section].setdefault(key, []).append(a)
        if probes:
            grouped: dict[str, list] = {}
            for (k, _), t in zip(probes, got[1]):
                grouped.setdefault(k, []).append(t)
            rec["locality"] = {k: locality_score(pre["locality"][k], v) for k, v in grouped.items()}
        if self.generation:
            rec["generation"] = self._generation_post(rows, loc_probes, got[2], gen_pre)
        return rec

    # ---- generated answers (editwrap.evals.generation) ------------------------------------------
    def _answers(self, prompts: Sequence[str], targets: Sequence[str]) -> Request:
        """Greedy answers (through ``_on``: text-plane entries seen); the budget is set per probe
        from its target, so pre and post answers to one prompt get the same budget, and a row's
        answer does not depend on the other rows of its batch."""
        budgets = [answer_budget(self.tok, p, t, self.gen_margin) for p, t in zip(prompts, targets)]
        return Request(generate_answers, list(prompts), (budgets,), {"chat_template": self.chat_template})

    def _generation_post(self, rows: list[tuple[str, str | None, str, str]], loc_probes: list[tuple[str, Probe]],
                         ans: list[str], pre: dict[str, Any] | None) -> dict[str, Any]:
        """The ``generation`` block from the answers to the rows' and locality prompts."""
        scored = score_answers(ans[:len(rows)], [r[3] for r in rows])
        gen: dict[str, Any] = {"rewrite": {}, "portability": {}, "locality": {}}
        for i, (section, key, _, _) in enumerate(rows):
            name = {"rewrite_acc": "rewrite", "rephrase_acc": "rephrase"}.get(section, section)
            slot = gen.setdefault(name, {}) if key is None else gen[name].setdefault(key, {})
            for field, vals in scored.items():
                slot.setdefault(field, []).append(vals[i])
        gen["rewrite"]["answer"] = [ans[0]]
        post: dict[str, list[str]] = {}
        for (k, _), a in zip(loc_probes, ans[len(rows):]):
            post.setdefault(k, []).append(a)
        if pre is not None:
            gen["rewrite"]["answer_pre"] = [pre["rewrite"]]
            gen["locality"] = {k: locality_match(pre["locality"][k], v) for k, v in post.items()}
        self.gen_records += 1
        return gen

    def _convsent(self, item: ConvSentRecord, pre: dict[str, Any]) -> dict[str, Any]:
        ctx, rep, is_target = item.inner_qa()
        octx, orep = item.outer_qa()
        inner = self._on(token_logprobs, ctx, rep)
        outer = self._on(continuation_logprob_dists, octx, orep)
        return {"es": convsent_success(pre["inner"], inner, is_target),
                "dd": kl_divergence_locality(pre["outer"], outer)}

    def _generate(self, prompts: Sequence[str]) -> list[list[int]]:
        return self._on(generate_tokens, prompts, max_new_tokens=self.gen_tokens)

    def _sanitation(self, f: Fact) -> dict[str, Any]:
        gen = self.tok.decode(self._generate([f.text_prompt])[0], skip_special_tokens=True)
        post = self._generate([p.prompt for p in self.retain]) if self.retain else []
        return {"success": sanitation_success([gen], f.target_new), "generation": gen,
                "locality": {"retain": sanitation_locality(self._retain_pre or [], post)}}
