"""Scorer.pre_many / post_many: records merged across items into full batches equal the per-item ones."""
from __future__ import annotations

import json

import pytest

from editwrap import Fact
from editwrap.evals.batching import Request, drive
from editwrap.evals.datasets import load_dataset
from editwrap.evals.generation import answer_budget, generate_answers
from editwrap.evals.measure import Scorer
from editwrap.evals.runner import load_records
from editwrap.facts import Probe
from tests.conftest import KNOWEDIT_DIR

STRONG = {"num_steps": 8, "lr": 0.05, "early_stop_loss": 0.0}
# no rephrase, no portability, two locality keys, a long target (a larger generation budget)
ODD = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower",
           target_new="Rome, the capital city of Italy and of the Roman Empire",
           locality={"A": [Probe(prompt="The capital of France is", answer="Paris")],
                     "B": [Probe(prompt="Apple is", answer="a company"), Probe(prompt="London", answer="Berlin")]})


def _items(n: int = 10) -> list:
    return load_records("mixed", KNOWEDIT_DIR, n)[0] + [ODD]


def _dump(recs: list) -> str:
    return json.dumps(recs, sort_keys=False)


@pytest.mark.parametrize("batch_size", [16, 3])
def test_batched_records_equal_per_record(tiny_model, batch_size):
    """Same JSON, pre and post, with an edit pushed (accuracies, locality tokens and generated
    answers move), for both architectures and a batch size that cuts records across batches."""
    items = _items()
    sc = Scorer(tiny_model, batch_size=batch_size)
    pre_one = [sc.pre(x) for x in items]
    pre_many = sc.pre_many(items)
    assert _dump(pre_many) == _dump(pre_one)
    with tiny_model.edit(items[0], method="ft-m", **STRONG):
        post_one = [sc.post(x, p) for x, p in zip(items, pre_one)]
        post_many = sc.post_many(items, pre_many)
    assert _dump(post_many) == _dump(post_one)
    assert post_one[0]["rewrite_acc"] == [1.0]  # the edit took: the tokens and answers compared moved
    assert any(v < 1 for r in post_one for vals in r["locality"].values() for v in vals)
    assert sc.gen_records == 2 * len(items) and sc.gen_seconds > 0
    assert set(post_many[-1]["locality"]) == {"A", "B"} and "rephrase_acc" not in post_many[-1]


def test_merged_requests_are_few_full_calls(tiny_llama):
    """One call per metric for all records; generation mixes per-probe budgets in one batch."""
    items = _items(8)
    calls: list[tuple[str, int, list]] = []
    sc = Scorer(tiny_llama)
    real = Scorer._on

    def spy(self, fn, texts, *cols, **kw):
        calls.append((fn.__name__, len(texts), list(cols[0]) if cols else []))
        return real(self, fn, texts, *cols, **kw)

    Scorer._on = spy
    try:
        pres = sc.pre_many(items)
        n_pre = len(calls)
        sc.post_many(items, pres)
    finally:
        Scorer._on = real
    assert sorted(c[0] for c in calls[:n_pre]) == ["answer_tokens", "generate_answers"]
    assert sorted(c[0] for c in calls[n_pre:]) == ["answer_tokens", "generate_answers", "token_accuracy"]
    gen = next(c for c in calls[n_pre:] if c[0] == "generate_answers")
    assert gen[1] > 16 and len(set(gen[2])) > 1  # more than one batch, budgets of several sizes


def test_each_row_keeps_its_own_budget(tiny_llama):
    """A probe batched with longer-budget probes of other records is cut to its own budget."""
    tok = tiny_llama.tokenizer
    prompts = ["The capital of France is", "Apple", "The Eiffel Tower is located in the city of", "London"]
    budgets = [1, 12, 2, 9]
    alone = [generate_answers(tiny_llama, tok, [p], [b])[0] for p, b in zip(prompts, budgets)]
    assert generate_answers(tiny_llama, tok, prompts, budgets) == alone
    assert generate_answers(tiny_llama, tok, prompts[::-1], budgets[::-1]) == alone[::-1]


def test_text_plane_routing_sees_every_prompt(tiny_llama):
    """Merged requests still go through model._route, one text at a time."""
    seen: list[str] = []
    real = type(tiny_llama)._route

    def route(self, text):
        seen.append(text)
        return real(self, "Paris " + text)

    items = _items(4)
    sc = Scorer(tiny_llama)
    type(tiny_llama)._route = route
    try:
        pres = sc.pre_many(items)
        many = sc.post_many(items, pres)
        one = [sc.post(x, p) for x, p in zip(items, pres)]
    finally:
        type(tiny_llama)._route = real
    assert _dump(many) == _dump(one)
    for f in items:
        for p in [f.text_prompt, *f.rephrase, *(q.prompt for ps in (*f.portability.values(), *f.locality.values())
                                                 for q in ps)]:
            assert p in seen
    tok = tiny_llama.tokenizer
    for f, rec in zip(items, many):  # the routed text is what was answered
        budget = answer_budget(tok, f.text_prompt, f.target_new)
        want = generate_answers(tiny_llama, tok, ["Paris " + f.text_prompt], [budget])
        assert rec["generation"]["rewrite"]["answer"] == want


def test_convsent_and_sanitation_fall_back_per_record(tiny_llama):
    cs = load_dataset("convsent", KNOWEDIT_DIR / "ConvSent.json", n=2)
    sc = Scorer(tiny_llama, generation=False)
    pres = sc.pre_many(list(cs))
    assert _dump(sc.post_many(list(cs), pres)) == _dump([sc.post(x, p) for x, p in zip(cs, pres)])
    san = load_dataset("sanitation", KNOWEDIT_DIR / "Sanitation.json", n=2)
    sc = Scorer(tiny_llama, sanitation=True, retain=list(san.locality)[:2], gen_tokens=3, generation=False)
    pres = sc.pre_many(list(san))
    assert pres == [{}, {}]
    assert _dump(sc.post_many(list(san), pres)) == _dump([sc.post(x, p) for x, p in zip(san, pres)])


def _double(model, tok, texts, mult, batch_size=16, tag=""):
    return [f"{tag}{t * m}" for t, m in zip(texts, mult)]


def test_drive_merges_by_function_and_settings():
    runs: list[tuple[int, dict]] = []

    def run(req: Request) -> list:
        runs.append((len(req.texts), dict(req.kwargs)))
        return req.fn(None, None, req.texts, *req.cols, **req.kwargs)

    def record(k: int):
        a, b, empty = yield [Request(_double, ["x"] * k, ([2] * k,)), Request(_double, ["y"], ([1],), {"tag": "!"}),
                             Request(_double, [], ([],))]
        assert empty == []
        (c,) = yield [Request(_double, [a[0]], ([3],))]  # a second round that depends on the first
        return (len(a), b[0], c[0])

    def no_requests():
        return "done"
        yield  # pragma: no cover  (makes this a generator)

    got = drive([record(1), no_requests(), record(3)], run)
    assert got == [(1, "!y", "xxxxxx"), "done", (3, "!y", "xxxxxx")]
    assert runs == [(4, {}), (2, {"tag": "!"}), (2, {})]  # round 1: 1+3 rows, 2 tagged rows; round 2
