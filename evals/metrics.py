"""KnowEdit metrics with EasyEdit's definitions, on a plain HF causal LM + tokenizer.

Only ``model(input_ids=..., attention_mask=...)`` (output with ``.logits``), ``tok(text)`` ->
``{"input_ids": [...]}``, ``tok.decode`` and, for fast generation, ``model.generate`` are used, so
any wrapped/edited model works. Scoring functions take data (token lists, log-probs) so the
"pre" numbers can be computed before an edit is pushed and the "post" numbers after.

Deliberate differences from EasyEdit (zjunlp/EasyEdit@14cea82) are listed where they occur:
padding-exact batching (:func:`token_accuracy`), greedy generation (:func:`fluency`), the regex
word tokenizer (:func:`word_tokenize`) and shifted log-probs for ConvSent (:func:`convsent_success`).
:func:`fluency_easyedit` keeps EasyEdit's sampled generation, for numbers comparable with its tables.
"""
from __future__ import annotations

import inspect
import math
import re
import unicodedata
import zlib
from collections import Counter
from typing import Any, Iterator, Mapping, Sequence

import torch

from editwrap.ops.forward import model_device as _device
from editwrap.ops.forward import pad_id as _pad_id
from editwrap.ops.forward import padded_forward as _forward
from editwrap.ops.scope import route_as
from editwrap.ops.forward import token_ids as _ids

__all__ = [
    "token_accuracy", "answer_tokens", "locality_score", "token_logprobs", "sequence_logprob",
    "continuation_logprob_dists", "word_tokenize", "compute_n_gram_entropy", "n_gram_entropy",
    "generate_tokens", "fluency", "generate_fast", "fluency_easyedit", "FLUENCY_MODES", "convsent_success",
    "kl_divergence_locality", "sanitation_success", "sanitation_locality", "summarize", "summarize_generation",
]


# ---- teacher-forced scoring ---------------------------------------------------------------------

def _scored(model: Any, tok: Any, prefixes: Sequence[str], texts: Sequence[str],
            batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """For each (prefix, text): the tokens of ``text`` after the prefix's token count and the
    logits rows that predict them, shape [T, V] (EasyEdit's ``prompt_len - 1 : -1`` slice)."""
    if len(prefixes) != len(texts):
        raise ValueError(f"got {len(prefixes)} prompts but {len(texts)} targets")
    pad, side = _pad_id(tok), getattr(tok, "padding_side", "right")
    for b in range(0, len(texts), batch_size):
        seqs = [_ids(tok, t) for t in texts[b:b + batch_size]]
        n_pre = [len(_ids(tok, p)) for p in prefixes[b:b + batch_size]]
        if min(n_pre) < 1:
            raise ValueError("a prompt tokenizes to no tokens; nothing to condition the target on")
        with route_as(prefixes[b:b + batch_size]):  # scoped edits route on the prompt, as in generation
            logits, starts = _forward(model, seqs, pad, side)
        for i, (s, n, st) in enumerate(zip(seqs, n_pre, starts)):
            yield s[n:], logits[i, st + n - 1:st + len(s) - 1]


def token_accuracy(model: Any, tok: Any, prompts: Sequence[str], targets: Sequence[str],
                   batch_size: int = 16) -> list[float]:
    """EasyEdit ``test_prediction_acc``: teacher-force ``prompt + ' ' + target`` and return, per
    pair, the fraction of target tokens equal to the argmax prediction (NaN if no target token)."""
    out = []
    for tgt, rows in _scored(model, tok, prompts, [p + " " + t for p, t in zip(prompts, targets)], batch_size):
        hits = [float(a == b) for a, b in zip(rows.argmax(-1).tolist(), tgt)]
        out.append(sum(hits) / len(hits) if hits else math.nan)
    return out


def answer_tokens(model: Any, tok: Any, prompts: Sequence[str], answers: Sequence[str],
                  batch_size: int = 16) -> list[list[int]]:
    """Argmax tokens at the answer positions (EasyEdit ``locality=True`` output), for locality."""
    joined = [p + " " + a for p, a in zip(prompts, answers)]
    return [rows.argmax(-1).tolist() for _, rows in _scored(model, tok, prompts, joined, batch_size)]


def locality_score(pre_tokens: Sequence[Sequence[int]], post_tokens: Sequence[Sequence[int]]) -> list[float]:
    """EasyEdit ``finalize_locality_metrics``: per probe, mean(pre == post) over answer positions."""
    if len(pre_tokens) != len(post_tokens):
        raise ValueError(f"{len(pre_tokens)} pre-edit outputs but {len(post_tokens)} post-edit outputs")
    out = []
    for a, b in zip(pre_tokens, post_tokens):
        if len(a) != len(b):
            raise ValueError(f"pre/post answer token counts differ ({len(a)} vs {len(b)}); same probes?")
        out.append(sum(float(x == y) for x, y in zip(a, b)) / len(a) if a else math.nan)
    return out


def continuation_logprob_dists(model: Any, tok: Any, contexts: Sequence[str], continuations: Sequence[str],
                               batch_size: int = 16) -> list[torch.Tensor]:
    """Next-token log-distributions [T, V] at each continuation token (text = context + continuation)."""
    joined = [c + x for c, x in zip(contexts, continuations)]
    return [rows.log_softmax(-1).cpu() for _, rows in _scored(model, tok, contexts, joined, batch_size)]


def token_logprobs(model: Any, tok: Any, contexts: Sequence[str], continuations: Sequence[str],
                   batch_size: int = 16) -> list[list[float]]:
    """log p(token | prefix) of every continuation token; text = context + continuation (no space
    added: as in lm-eval, the continuation carries its own leading space)."""
    joined = [c + x for c, x in zip(contexts, continuations)]
    out = []
    for tgt, rows in _scored(model, tok, contexts, joined, batch_size):
        lp = rows.log_softmax(-1).gather(-1, torch.tensor(tgt, dtype=torch.long, device=rows.device)[:, None])
        out.append(lp[:, 0].tolist())
    return out


def sequence_logprob(model: Any, tok: Any, contexts: Sequence[str], continuations: Sequence[str],
                     batch_size: int = 16) -> list[float]:
    """Total log-probability of each continuation given its context."""
    return [sum(lp) for lp in token_logprobs(model, tok, contexts, continuations, batch_size)]


# ---- fluency ------------------------------------------------------------------------------------

_ABBREV = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "inc", "ltd", "co", "no",
           "mt", "gen", "col", "lt", "sgt", "capt", "rev", "fig", "e.g", "i.e", "u.s", "jan", "feb",
           "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"}
_SENT_END = re.compile(r"(?<=[.!?])([\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")
# (pattern, replacement) in order: a condensed version of nltk's NLTKWordTokenizer rules. The
# sentence is padded with spaces between _WORD_RULES_PRE and _WORD_RULES_POST, as nltk does.
_WORD_RULES_PRE = [(re.compile(p), r) for p, r in (
    (r"([«“‘„]|`+)", r" \1 "), (r'^"', "``"), (r"(``)", r" \1 "), (r"([ (\[{<])(\"|'')", r"\1 `` "),
    (r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", r"\1 "),
    (r"([^.])(\.)([\])}>\"'»”’ ]*)\s*$", r"\1 \2 \3 "), (r"([:,])([^\d])", r" \1 \2"),
    (r"([:,])$", r" \1 "), (r"\.{2,}", r" \g<0> "), (r"[;@#$%&\u2012-\u2015?!]", r" \g<0> "),
    (r"([^'])' ", r"\1 ' "), (r"[*]", r" \g<0> "), (r"[\][(){}<>]", r" \g<0> "), (r"--", r" -- "),
)]
_WORD_RULES_POST = [(re.compile(p), r) for p, r in (
    (r"([»”’])", r" \1 "), (r"''", " '' "), (r'"', " '' "), (r"\s+", " "),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "), (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "),
    *((r"(?i)\b(" + a + ")(" + b + r")\b", r" \1 \2 ") for a, b in (
        ("can", "not"), ("d", "'ye"), ("gim", "me"), ("gon", "na"), ("got", "ta"), ("lem", "me"), ("more", "'n"))),
    (r"(?i)\b(wan)(na)(?=\s)", r" \1 \2 "), (r"(?i) ('t)(is)\b", r" \1 \2 "), (r"(?i) ('t)(was)\b", r" \1 \2 "),
)]


def _sentences(text: str) -> list[str]:
    """Split after . ! ? before a capital/digit, unless the period ends an abbreviation/initial."""
    out, start = [], 0
    for m in _SENT_END.finditer(text):
        word = text[start:m.start()].split()[-1:] or [""]
        stem = word[0].rstrip(".").lstrip("\"'(").lower()
        if text[m.start() - 1] == "." and (stem in _ABBREV or len(stem) == 1):
            continue
        out.append(text[start:m.end(1)])
        start = m.end()
    return [s for s in (*out, text[start:]) if s.strip()]


def word_tokenize(text: str) -> list[str]:
    """Words for :func:`n_gram_entropy`, approximating ``nltk.word_tokenize`` without punkt data.

    Per sentence it applies nltk's Treebank-style rules (quotes -> `` and '', punctuation, final
    period, clitics n't/'s/'ll, cannot/gonna). It differs from nltk in the sentence splitter:
    punkt's learned boundaries are replaced by "[.!?] + space + capital/digit", skipping a short
    abbreviation list and single-letter initials; so mid-text periods after unlisted abbreviations
    are split off where punkt would keep them, and sentences starting lowercase are not split.
    """
    toks: list[str] = []
    for sent in _sentences(text):
        for pat, rep in _WORD_RULES_PRE:
            sent = pat.sub(rep, sent)
        sent = " " + sent + " "
        for pat, rep in _WORD_RULES_POST:
            sent = pat.sub(rep, sent)
        toks.extend(sent.split())
    return toks


def compute_n_gram_entropy(sentence: str, ns: Sequence[int] = (2, 3),
                           weights: Sequence[float] = (2 / 3, 4 / 3), agg: str = "arith") -> float:
    """EasyEdit ``compute_n_gram_entropy``: weighted bi-/tri-gram entropies (bits), then mean."""
    toks = word_tokenize(sentence)
    vals = []
    for n, w in zip(ns, weights):
        freqs = Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
        total = sum(freqs.values())
        vals.append(w * sum(-c / total * math.log2(c / total) for c in freqs.values()))
    return _agg(vals, agg)


def _agg(vals: Sequence[float], agg: str) -> float:
    if agg not in ("arith", "geom"):
        raise ValueError(f"agg must be 'arith' or 'geom', got {agg!r}")
    if agg == "arith":
        return sum(vals) / len(vals)
    return 0.0 if min(vals) <= 0 else math.exp(sum(math.log(v) for v in vals) / len(vals))


def n_gram_entropy(texts: Sequence[str], agg: str = "arith") -> float:
    """EasyEdit ``n_gram_entropy``: mean of :func:`compute_n_gram_entropy` over texts."""
    if isinstance(texts, str):
        texts = [texts]
    return _agg([compute_n_gram_entropy(t) for t in texts], agg)


def generate_tokens(model: Any, tok: Any, prompts: Sequence[str], max_new_tokens: int = 10, *,
                    top_k: int | None = None, seed: int = 0, batch_size: int = 16) -> list[list[int]]:
    """New tokens per prompt (greedy, or top-k sampling with ``seed``), cut before the first EOS.

    Uses ``model.generate`` when the model has it (KV cache), else a plain loop over forwards.
    """
    eos = getattr(tok, "eos_token_id", None)
    pad, dev = _pad_id(tok), _device(model)
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    for b in range(0, len(prompts), batch_size):
        seqs = [_ids(tok, p) for p in prompts[b:b + batch_size]]
        if hasattr(model, "generate"):
            width = max(map(len, seqs))
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=dev)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=dev)
            with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
                torch.manual_seed(seed)
                res = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=top_k is not None, top_k=top_k, pad_token_id=pad)
            new = res[:, width:].tolist()
        else:
            new = [[] for _ in seqs]
            for _ in range(max_new_tokens):
                logits, _ = _forward(model, [s + t for s, t in zip(seqs, new)], pad, "left")
                last = logits[:, -1].cpu()
                if top_k is None:
                    nxt = last.argmax(-1)
                else:
                    vals, idx = last.topk(top_k, -1)
                    nxt = idx.gather(-1, torch.multinomial(vals.softmax(-1), 1, generator=gen))[:, 0]
                for t, x in zip(new, nxt.tolist()):
                    t.append(x)
                if eos is not None and all(eos in t for t in new):
                    break
        out.extend(t[:t.index(eos)] if eos in t else t for t in new)
    return out


def fluency(model: Any, tok: Any, prompts: Sequence[str], max_new_tokens: int = 100, *,
            top_k: int | None = None, seed: int = 0) -> float:
    """EasyEdit ``test_generation_quality``: n-gram entropy of prompt + generation text.

    Differences: EasyEdit samples top-5 (``generate_fast``) up to 100 tokens *including* the
    prompt and ignores EOS; here decoding is greedy by default (deterministic; pass ``top_k=5`` to
    sample), ``max_new_tokens`` counts new tokens only and generation stops at EOS. Greedy text
    repeats more, so expect lower entropy than EasyEdit's sampled numbers; :func:`fluency_easyedit`
    gives numbers comparable with EasyEdit's (docs/fluency.md).
    """
    texts = []
    for p, new in zip(prompts, generate_tokens(model, tok, prompts, max_new_tokens, top_k=top_k, seed=seed)):
        txt = tok.decode(_ids(tok, p) + new, skip_special_tokens=True)
        texts.append(_clean(txt))
    return n_gram_entropy(texts)


def _clean(text: str) -> str:
    """EasyEdit's post-processing of decoded generations."""
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ").replace("<|endoftext|>", "")


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = out["logits"] if isinstance(out, Mapping) else out[0]
    return logits


def _prompt_seed(seed: int, prompt: str) -> int:
    """Seed of one prompt's sampling: the run seed and the prompt text, so a record's sample does
    not depend on its batch, its position in the run or a resume."""
    return zlib.crc32(f"{int(seed)}\0{prompt}".encode("utf-8"))  # 32 bits: what the CPU mt19937 uses


def generate_fast(model: Any, tok: Any, prompts: Sequence[str], max_out_len: int = 100, *,
                  top_k: int = 5, seed: int = 0, return_ids: bool = False) -> list[str] | list[list[int]]:
    """EasyEdit ``generate_fast`` (``easyeditor/util/generate.py``) for one prompt at a time.

    Each step takes the softmax of the last position's logits, keeps the ``top_k`` most likely
    tokens, renormalises them and samples one; generation runs until the sequence *including the
    prompt tokens* (and a BOS the tokenizer adds) is ``max_out_len`` tokens long, with no stop at
    EOS (a prompt of ``max_out_len`` tokens or more gets no new token). The text is the decoded
    whole sequence (``skip_special_tokens``), NFKD-normalised, ``"\\n\\n"`` -> ``" "``.

    Sampling draws from a CPU ``torch.Generator`` seeded per prompt from ``seed`` and the prompt
    text (EasyEdit uses the global torch RNG, unseeded): the same prompt, model and seed give the
    same text on any device up to floating-point ties. Uses the model's KV cache when its forward
    takes ``cache`` (or ``past_key_values``), else re-runs the whole sequence each step.
    ``return_ids``: the token ids (prompt + new) instead of the texts.
    """
    if top_k < 1 or max_out_len < 1:
        raise ValueError("top_k and max_out_len must be >= 1")
    dev = _device(model)
    params = inspect.signature(model.forward).parameters
    # the KV cache argument: ``cache`` in transformers >= 5.2x, ``past_key_values`` before
    cache_kw = next((k for k in ("cache", "past_key_values") if k in params), None)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    pad = _pad_id(tok)
    out: list[Any] = []
    for prompt in prompts:
        seq = _ids(tok, prompt)
        if not seq:
            raise ValueError("a prompt tokenizes to no tokens; nothing to generate from")
        gen = torch.Generator().manual_seed(_prompt_seed(seed, prompt))
        past = None
        with torch.no_grad():
            while len(seq) < max_out_len:
                if cache_kw is not None:
                    step = seq if past is None else seq[-1:]
                    res = model(input_ids=torch.tensor([step], device=dev), use_cache=True,
                                **{cache_kw: past}, **extra)
                    past = getattr(res, cache_kw, None)
                    last = _logits(res)[0, -1]
                else:
                    logits, _ = _forward(model, [seq], pad, "right")
                    last = logits[0, -1]
                probs = last.float().softmax(-1)
                vals, idx = probs.topk(min(top_k, probs.numel()))
                vals, idx = vals.cpu(), idx.cpu()
                pick = torch.multinomial(vals / vals.sum(), 1, generator=gen)
                seq.append(int(idx[pick]))
        out.append(seq if return_ids else _clean(tok.decode(seq, skip_special_tokens=True)))
    return out


def fluency_easyedit(model: Any, tok: Any, prompts: Sequence[str], max_out_len: int = 100, *,
                     top_k: int = 5, seed: int = 0) -> float:
    """EasyEdit ``test_generation_quality``: mean :func:`n_gram_entropy` (bits; weights 2/3, 4/3 on
    bi-/tri-grams, arithmetic mean) of :func:`generate_fast` texts, top-``top_k`` sampling up to
    ``max_out_len`` tokens including the prompt, no EOS stop. The word tokenizer is
    :func:`word_tokenize` (nltk's rules without its punkt sentence splitter). KnowEdit tables
    report 100 x this value averaged over records (:func:`summarize` does the same)."""
    return n_gram_entropy(generate_fast(model, tok, prompts, max_out_len, top_k=top_k, seed=seed))


# "greedy": :func:`fluency` (the default); "easyedit": :func:`fluency_easyedit`.
FLUENCY_MODES = ("greedy", "easyedit")


# ---- ConvSent and Sanitation --------------------------------------------------------------------

def convsent_success(pre_logprobs: Sequence[Sequence[float]], post_logprobs: Sequence[Sequence[float]],
                     is_target: Sequence[bool]) -> float:
    """EasyEdit ``es``: sigmoid(mean post logp of target-sentiment reply tokens - mean of the other
    sentiment's) x min(1, exp(mean post - mean pre logp on target-sentiment tokens)).

    Means pool all tokens of the selected replies (``masked_mean``). Inputs come from
    :func:`token_logprobs` (``ConvSentRecord.inner_qa()``). EasyEdit gathers logits at position t
    for token t (no causal shift); we score each token from its prefix, as a language model does.
    """
    def pooled(rows: Sequence[Sequence[float]], want: bool) -> float:
        vals = [v for r, t in zip(rows, is_target) if t == want for v in r]
        if not vals:
            raise ValueError(f"no {'target' if want else 'other'}-sentiment reply tokens to score")
        return sum(vals) / len(vals)

    if not len(pre_logprobs) == len(post_logprobs) == len(is_target):
        raise ValueError("pre_logprobs, post_logprobs and is_target must have one entry per reply")
    pos_post, neg_post, pos_pre = pooled(post_logprobs, True), pooled(post_logprobs, False), pooled(pre_logprobs, True)
    return 1 / (1 + math.exp(-(pos_post - neg_post))) * min(1.0, math.exp(pos_post - pos_pre))


def kl_divergence_locality(pre_dists: Sequence[torch.Tensor], post_dists: Sequence[torch.Tensor]) -> float:
    """EasyEdit ``kl_loc_loss``: KL(pre || post) of next-token distributions, averaged over all
    reply tokens (from :func:`continuation_logprob_dists` on ``ConvSentRecord.outer_qa()``).
    Lower is better; 0 = the edit left these replies untouched."""
    if len(pre_dists) != len(post_dists):
        raise ValueError(f"{len(pre_dists)} pre-edit but {len(post_dists)} post-edit replies")
    pre, post = torch.cat(list(pre_dists)).float(), torch.cat(list(post_dists)).float()
    if pre.shape != post.shape:
        raise ValueError(f"pre/post distributions differ in shape: {tuple(pre.shape)} vs {tuple(post.shape)}")
    return float((pre.exp() * (pre - post)).sum(-1).mean()) if len(pre) else math.nan


def sanitation_success(generations: Sequence[str], target: str = "I don't know.") -> float:
    """Fraction of generations containing ``target`` (case-insensitive), EasyEdit ``compare``."""
    if not generations:
        return math.nan
    return sum(target.lower() in g.lower() for g in generations) / len(generations)


def sanitation_locality(pre_gen_tokens: Sequence[Sequence[int]],
                        post_gen_tokens: Sequence[Sequence[int]]) -> list[float]:
    """Per retain prompt: positions where the post-edit generation repeats the pre-edit one,
    over the pre-edit length (EasyEdit ``Experimenter.locality``). Pass generated tokens only:
    EasyEdit re-tokenizes decoded text, adding a BOS that always matches; we do not count it.
    An empty pre-edit generation scores 1.0 if the post-edit one is empty too, else 0.0."""
    if len(pre_gen_tokens) != len(post_gen_tokens):
        raise ValueError(f"{len(pre_gen_tokens)} pre-edit but {len(post_gen_tokens)} post-edit generations")
    return [sum(a == b for a, b in zip(pre, post)) / len(pre) if pre else float(not post)
            for pre, post in zip(pre_gen_tokens, post_gen_tokens)]


# ---- aggregation --------------------------------------------------------------------------------

def _mean(vals: Any) -> float:
    """Mean ignoring NaN (EasyEdit drops NaN accuracies); a scalar passes through."""
    vals = [float(v) for v in (vals if isinstance(vals, (list, tuple)) else [vals]) if not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else math.nan


def _numeric(v: Any) -> bool:
    vals = v if isinstance(v, list) else [v]
    return bool(vals) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals)


def _nested(records: Sequence[Mapping[str, Any]], section: str) -> tuple[float | None, dict[str, float]]:
    """Mean within each key, then across a record's keys, then across records (x100)."""
    per_record, per_key = [], {}
    for r in records:
        # EasyEdit names keys "<key>_acc" and (at HEAD) leaves raw "<key>_output" token lists beside them
        means = {k.removesuffix("_acc"): _mean(v)
                 for k, v in (r.get(section) or {}).items() if not k.endswith("_output")}
        means = {k: m for k, m in means.items() if not math.isnan(m)}
        for k, m in means.items():
            per_key.setdefault(k, []).append(m)
        if means:
            per_record.append(sum(means.values()) / len(means))
    overall = 100 * sum(per_record) / len(per_record) if per_record else None
    return overall, {k: 100 * sum(v) / len(v) for k, v in per_key.items()}


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate per-edit results like EasyEdit's ``run_knowedit_llama2.py::eval``.

    A record is ``{"rewrite_acc": [..], "rephrase_acc": [..], "portability": {key: [..]},
    "locality": {key: [..]}, "fluency": float | {"ngram_entropy": float}, ...}`` or EasyEdit's
    ``{"pre": ..., "post": ...}`` (post is used). Edit Succ./Rephrase/Fluency: mean over records
    x100; Portability/Locality: see :func:`_nested`; records without any probe of a section do not
    count. Other numeric keys (ConvSent ``es``/``dd``, Sanitation ``success``) are averaged unscaled.
    Missing metrics are None. Records with generated-answer scores (a ``generation`` mapping, see
    :mod:`editwrap.evals.generation`) add a ``generation`` block with the same names, plus F1 ones;
    records of the CounterFact protocol add ``memit`` / ``memit_pre`` blocks
    (:func:`editwrap.evals.counterfact_summary.summarize_counterfact`).
    """
    recs = [r.get("post", r) for r in records]
    out: dict[str, Any] = {"n": len(recs)}
    for name, key in (("Edit Succ.", "rewrite_acc"), ("Rephrase", "rephrase_acc")):
        vals = [_mean(r[key]) for r in recs if key in r]
        vals = [v for v in vals if not math.isnan(v)]
        out[name] = 100 * sum(vals) / len(vals) if vals else None
    for name, section in (("Portability", "portability"), ("Locality", "locality")):
        out[name], out[f"{name} by key"] = _nested(recs, section)
    flu = [r["fluency"]["ngram_entropy"] if isinstance(r["fluency"], Mapping) else r["fluency"]
           for r in recs if "fluency" in r]
    out["Fluency"] = 100 * sum(flu) / len(flu) if flu else None
    skip = {"rewrite_acc", "rephrase_acc", "portability", "locality", "fluency", "case_id", "time"}
    extra = sorted({k for r in recs for k, v in r.items() if k not in skip and _numeric(v)})
    for k in extra:
        vals = [m for r in recs if k in r and not math.isnan(m := _mean(r[k]))]
        out[k] = sum(vals) / len(vals) if vals else None
    gens = [r["generation"] for r in recs if isinstance(r.get("generation"), Mapping)]
    if gens:
        out["generation"] = summarize_generation(gens)
    for key in ("memit", "memit_pre"):  # protocol="memit" (editwrap.evals.counterfact): after / before the edits
        blocks = [r[key] for r in recs if isinstance(r.get(key), Mapping)]
        if blocks:
            from .counterfact_summary import summarize_counterfact

            out[key] = summarize_counterfact(blocks)
    return out


def summarize_generation(gens: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The run summary's ``generation`` block: the EasyEdit block's names and averaging order
    (:func:`summarize`) applied to ``success``, plus ``... F1`` variants
    from ``f1``."""
    def shaped(g: Mapping[str, Any], field: str) -> dict[str, Any]:
        r: dict[str, Any] = {"rewrite_acc": (g.get("rewrite") or {}).get(field, []),
                             "portability": {k: v.get(field, []) for k, v in (g.get("portability") or {}).items()},
                             "locality": dict(g.get("locality") or {}) if field == "success" else {}}
        if g.get("rephrase"):
            r["rephrase_acc"] = g["rephrase"].get(field, [])
        return r

    s, f = summarize([shaped(g, "success") for g in gens]), summarize([shaped(g, "f1") for g in gens])
    return {"n": len(gens), "Edit Succ.": s["Edit Succ."], "Rephrase": s["Rephrase"], "Portability": s["Portability"],
            "Locality": s["Locality"], "Edit Succ. F1": f["Edit Succ."], "Rephrase F1": f["Rephrase"],
            "Portability F1": f["Portability"], "Portability by key": s["Portability by key"],
            "Locality by key": s["Locality by key"]}
