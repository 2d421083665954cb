"""Generated-answer metrics: normalisation, prefix match, F1, stopping, batching, Scorer, summary, report."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from editwrap import Fact
from editwrap.evals.generation import (answer_budget, answer_f1, answer_match, cut_answer, generate_answers,
                                       locality_match, normalize_answer)
from editwrap.evals.measure import Scorer
from editwrap.evals.metrics import summarize, summarize_generation
from editwrap.evals.report import build_report, load_summaries
from editwrap.facts import Probe

WORDS = ["<pad>", "<eos>", "the", "capital", "of", "France", "is", "Paris", "Rome", "NL", "city"]
ID = {w: i for i, w in enumerate(WORDS)}


class Tok:
    """Whitespace tokenizer over WORDS; "NL" decodes to a newline, <eos> is special."""

    pad_token_id, eos_token_id, padding_side = 0, 1, "left"

    def __call__(self, text: str) -> dict:
        return {"input_ids": [ID[w] for w in text.split()]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        words = [WORDS[i] for i in ids if not (skip_special_tokens and i < 2)]
        return " ".join(words).replace(" NL ", "\n").replace("NL ", "\n").replace(" NL", "\n").replace("NL", "\n")


class Chain(torch.nn.Module):
    """Next token depends on the current token only (a fixed chain); counts forward calls."""

    def __init__(self, nxt: dict[str, str]):
        super().__init__()
        t = torch.zeros(len(WORDS), len(WORDS))
        t[:, ID["Rome"]] = 1.0
        for a, b in nxt.items():
            t[ID[a]] = 0.0
            t[ID[a], ID[b]] = 1.0
        self.table = torch.nn.Parameter(t)
        self.calls = 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        return SimpleNamespace(logits=self.table[input_ids])


def test_normalize_answer_squad_style():
    assert normalize_answer("  The Eiffel-Tower, in   PARIS! ") == "eiffel tower in paris"  # '-' -> space
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("“Théâtre” — an opera") == "théâtre opera"  # Unicode punctuation dropped too
    assert normalize_answer("theatre another") == "theatre another"  # articles only as whole words


def test_prefix_match_and_f1_by_hand():
    assert answer_match("Paris, the capital of France.", "paris") == 1.0
    assert answer_match("the Paris", "Paris") == 1.0  # articles do not count
    assert answer_match("Parisian food", "Paris") == 0.0  # word-level prefix, not characters
    assert answer_match("It is Paris", "Paris") == 0.0  # must begin with the target
    assert answer_match("New York City", "New York") == 1.0 and answer_match("New", "New York") == 0.0
    assert answer_match("mezzo-soprano.", "mezzo soprano") == 1.0
    assert math.isnan(answer_match("anything", "The"))  # empty after normalisation
    # "city of paris" vs "paris": common 1, precision 1/3, recall 1 -> F1 = 0.5
    assert answer_f1("The city of Paris", "Paris") == pytest.approx(0.5)
    # "paris france" vs "paris is in france": common 2, p = 1, r = 2/4 -> 2/3
    assert answer_f1("Paris France", "Paris is in France") == pytest.approx(2 / 3)
    assert answer_f1("", "Paris") == 0.0 and answer_f1("Rome", "Paris") == 0.0
    assert answer_f1("paris paris", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)  # repeats count once
    assert locality_match(["The Paris.", "Rome"], ["paris", "Rome city"]) == [1.0, 0.0]


def test_cut_answer():
    assert cut_answer("\n\n  Paris\nThe capital") == "Paris"
    assert cut_answer(" Paris is big. \n") == "Paris is big."
    assert cut_answer("\n \n") == ""


def test_stops_at_newline_eos_and_budget():
    tok = Tok()
    # leading newline skipped; the answer ends at the next newline, and decoding stops there
    m = Chain({"is": "NL", "NL": "Paris", "Paris": "France", "France": "NL"})
    assert generate_answers(m, tok, ["the capital of France is"], [20]) == ["Paris France"]
    assert m.calls == 4  # NL, Paris, France, NL: not 20
    m = Chain({"is": "Paris", "Paris": "<eos>", "<eos>": "Rome"})
    assert generate_answers(m, tok, ["France is"], [20]) == ["Paris"]
    assert m.calls == 2
    m = Chain({})  # Rome forever: cut at the budget
    assert generate_answers(m, tok, ["is", "is"], [3, 1]) == ["Rome Rome Rome", "Rome"]
    assert m.calls == 3
    assert answer_budget(tok, "France is", "Paris France", margin=8) == 10


@pytest.mark.parametrize("bs", [1, 3, 16])
def test_batched_answers_equal_one_by_one(tiny_model, bs):
    tok = tiny_model.tokenizer
    prompts = ["The capital of France is", "Paris", "The Eiffel Tower is located in the city of",
               "Apple", "London Berlin and"]
    budgets = [5, 1, 9, 3, 7]
    single = [generate_answers(tiny_model, tok, [p], [b])[0] for p, b in zip(prompts, budgets)]
    assert generate_answers(tiny_model, tok, prompts, budgets, batch_size=bs) == single
    assert any(single)


def test_chat_template_wraps_the_prompt(tiny_llama):
    tok = tiny_llama.tokenizer
    tok.chat_template = "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Answer:"
    try:
        got = generate_answers(tiny_llama, tok, ["The capital of France is"], [6], chat_template=True)
        assert got == generate_answers(tiny_llama, tok, ["User: The capital of France is\nAnswer:"], [6])
    finally:
        tok.chat_template = None


FACT = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome",
            rephrase=["Where is the Eiffel Tower?"],
            portability={"Reasoning": [Probe(prompt="The Eiffel Tower's country is", answer="Italy")]},
            locality={"Relation_Specificity": [Probe(prompt="The capital of France is", answer="Paris"),
                                               Probe(prompt="Apple is", answer="a company")]})


def test_scorer_generation_block(tiny_llama):
    sc = Scorer(tiny_llama)
    pre = sc.pre(FACT)
    rec = sc.post(FACT, pre)  # no edit pushed: locality answers cannot change
    g = rec["generation"]
    assert set(g) == {"rewrite", "rephrase", "portability", "locality"}
    assert set(g["rewrite"]) == {"success", "f1", "answer", "answer_pre"}
    assert g["rewrite"]["answer"] == g["rewrite"]["answer_pre"] and isinstance(g["rewrite"]["answer"][0], str)
    assert len(g["rephrase"]["success"]) == 1 and set(g["portability"]["Reasoning"]) == {"success", "f1"}
    assert g["locality"] == {"Relation_Specificity": [1.0, 1.0]}
    tok = tiny_llama.tokenizer
    want = generate_answers(tiny_llama, tok, [FACT.prompt], [answer_budget(tok, FACT.prompt, "Rome")])
    assert g["rewrite"]["answer"] == want and sc.gen_records == 1 and sc.gen_seconds > 0
    # a changed unedited answer scores 0 on that probe only
    pre["generation"]["locality"]["Relation_Specificity"][1] += " something else"
    assert sc.post(FACT, pre)["generation"]["locality"] == {"Relation_Specificity": [1.0, 0.0]}
    off = Scorer(tiny_llama, generation=False)
    assert "generation" not in off.post(FACT, off.pre(FACT)) and "generation" not in off.pre(FACT)


def test_scorer_generation_sees_text_plane_entries(tiny_llama):
    """Generation goes through ``model._route``: the routed text is what the model continues."""
    seen = []
    real = type(tiny_llama)._route

    def route(self, text):
        seen.append(text)
        return real(self, "Paris " + text)

    sc = Scorer(tiny_llama)
    type(tiny_llama)._route = route
    try:
        rec = sc.post(FACT, sc.pre(FACT))
    finally:
        type(tiny_llama)._route = real
    assert FACT.prompt in seen
    tok = tiny_llama.tokenizer
    want = generate_answers(tiny_llama, tok, ["Paris " + FACT.prompt], [answer_budget(tok, FACT.prompt, "Rome")])
    assert rec["generation"]["rewrite"]["answer"] == want


def _gen(success, f1, loc, port=None, reph=None):
    g = {"rewrite": {"success": [success], "f1": [f1], "answer": ["x"]}, "locality": {"R": loc},
         "portability": port or {}}
    if reph is not None:
        g["rephrase"] = {"success": [reph], "f1": [reph]}
    return g


def test_summary_generation_block():
    port = {"A": {"success": [0.0, 1.0], "f1": [0.5, 1.0]}}
    recs = [{"rewrite_acc": [1.0], "generation": _gen(1.0, 1.0, [1.0, 0.0], port, 1.0)},
            {"rewrite_acc": [0.5], "generation": _gen(0.0, 0.5, [1.0], reph=0.0)},
            {"rewrite_acc": [0.0], "generation": "a Sanitation generation string is not a block"}]
    s = summarize(recs)
    g = s["generation"]
    assert g["n"] == 2 and g["Edit Succ."] == 50.0 and g["Edit Succ. F1"] == 75.0
    assert g["Rephrase"] == 50.0 and g["Portability"] == 50.0 and g["Portability F1"] == 75.0
    assert g["Locality"] == 75.0 and g["Locality by key"] == {"R": 75.0}
    assert summarize_generation([])["Edit Succ."] is None
    assert "generation" not in summarize([{"rewrite_acc": [1.0]}])  # old records: no block


def test_report_shows_generation_and_loads_old_records(tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir(), old.mkdir()
    m = summarize([{"rewrite_acc": [1.0], "locality": {"R": [1.0]}, "generation": _gen(0.0, 0.5, [1.0])}])
    (new / "zsre-rome-single.summary.json").write_text(json.dumps(
        {"dataset": "zsre", "method": "rome", "mode": "single", "model": "m", "n": 1, "metrics": m}))
    # an old run still in progress: meta + JSONL lines without any generation field
    meta = {"dataset": "zsre", "method": "ft-m", "mode": "single", "n": 2, "model": "m"}
    (old / "zsre-ft-m-single.meta.json").write_text(json.dumps(meta))
    line = {"index": 0, "post": {"rewrite_acc": [0.5], "portability": {}, "locality": {"R": [1.0]}}}
    (old / "zsre-ft-m-single.jsonl").write_text(json.dumps(line) + "\n")
    runs = load_summaries([old])
    assert runs[0]["in_progress"] and "generation" not in runs[0]["metrics"]
    text = build_report([new, old], tmp_path / "rep")
    assert "| metric | ft-m [in progress: 1/2] | rome |" in text
    assert "| Edit Succ. | 50.00 | 100.00 |" in text
    assert "| Edit Succ. (generated) | – | 0.00 |" in text and "| Edit Succ. F1 (generated) | – | 50.00 |" in text
    assert "| Locality (generated) | – | 100.00 |" in text
    only_old = build_report([old], tmp_path / "rep2")
    assert "(generated) |" not in only_old  # no run has the block: no empty rows


def test_case_table_across_methods(tmp_path):
    from editwrap.cli import main

    for method, answer, ok in (("rome", "Rome, Italy", 1.0), ("ft-m", None, None)):
        post = {"rewrite_acc": [1.0], "locality": {}}
        if answer is not None:  # ft-m stands for an old run without generated answers
            post["generation"] = {"rewrite": {"success": [ok], "f1": [0.5], "answer": [answer],
                                              "answer_pre": ["Paris | France\nmore"]}, "locality": {}}
        lines = [{"index": i, "prompt": f"Q{i}?", "target_new": "Rome", "post": post} for i in range(3)]
        (tmp_path / f"zsre-{method}-single.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        (tmp_path / f"zsre-{method}-single.summary.json").write_text(json.dumps(
            {"dataset": "zsre", "method": method, "mode": "single", "model": "m", "n": 3, "metrics": summarize(lines)}))
    text = build_report([tmp_path], tmp_path / "rep", cases=2)
    assert "### Cases: ZsRE — single" in text
    assert "| # | prompt | target | unedited answer | ft-m | rome |" in text
    assert "| 0 | Q0? | Rome | Paris \\| France more | – | Rome, Italy ✓ |" in text
    assert "| 1 | Q1? |" in text and "| 2 | Q2? |" not in text
    assert "Cases:" not in build_report([tmp_path], tmp_path / "rep2")  # off by default
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep3"), "--cases", "1"]) == 0
    assert "| 0 | Q0? |" in (tmp_path / "rep3" / "report.md").read_text()
