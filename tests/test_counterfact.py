"""The ROME/MEMIT/AlphaEdit CounterFact protocol (editwrap.evals.counterfact): metrics against values
computed by hand from the model's own logits, ROME's and EasyEdit's CounterFact files, TF-IDF
consistency, the runner and the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from editwrap import Fact, state_dict_hash
from editwrap.evals import run_knowedit
from editwrap.evals.counterfact import (CounterfactScorer, counterfact_items, summarize_counterfact,
                                        target_scores)
from editwrap.evals.datasets import load_dataset
from editwrap.evals.metrics import n_gram_entropy
from editwrap.evals.tfidf import Tfidf
from tests.conftest import KNOWEDIT_DIR

EASYEDIT = KNOWEDIT_DIR / "counterfact_easyedit.json"
STRONG = {"num_steps": 8, "lr": 0.05, "early_stop_loss": 0.0}  # big enough to move the tiny model's argmax


def _rome_records() -> list[dict]:
    """Two records in ROME's ``counterfact.json`` schema, written here (ROME's file is not in the
    repository): the first carries the values of EasyEdit's record 0 (tests/data/knowedit/
    counterfact_easyedit.json) with ROME's relation and Wikidata ids, the second is made up."""
    return [
        {"case_id": 0, "pararel_idx": 2796,
         "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                               "target_new": {"str": "English", "id": "Q1860"},
                               "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux"},
         "paraphrase_prompts": ["Where Danielle Darrieux is from, people speak the language of",
                                "Danielle Darrieux spoke the language"],
         "neighborhood_prompts": ["Michel Rocard is a native speaker of", "The mother tongue of Paris is",
                                  "The native language of the Eiffel Tower is"],
         "attribute_prompts": ["The mother tongue of Douglas Adams is"],
         "generation_prompts": ["Danielle Darrieux's mother tongue is", "Danielle Darrieux was born in"]},
        {"case_id": 1, "pararel_idx": 1,
         "requested_rewrite": {"prompt": "{} is located in the city of", "relation_id": "P131",
                               "target_new": {"str": "Rome", "id": "Q220"},
                               "target_true": {"str": "Paris", "id": "Q90"}, "subject": "The Eiffel Tower"},
         "paraphrase_prompts": ["The Eiffel Tower can be found in"],
         "neighborhood_prompts": ["The capital of France is"],
         "attribute_prompts": [], "generation_prompts": ["The Eiffel Tower is in"]},
    ]


SNIPPETS = [{"relation_id": "P103", "target_id": "Q1860",
             "samples": [{"name": "Douglas Adams", "text": "Douglas Adams wrote in English. English is his language."},
                         {"name": "Tolkien", "text": "The professor spoke English at Oxford."}]},
            {"relation_id": "P27", "target_id": "Q142",
             "samples": [{"name": "Rocard", "text": "A French politician."}]}]


@pytest.fixture
def rome_dir(tmp_path):
    d = tmp_path / "rome_data"
    d.mkdir()
    (d / "counterfact.json").write_text(json.dumps(_rome_records()), encoding="utf-8")
    (d / "attribute_snippets.json").write_text(json.dumps(SNIPPETS), encoding="utf-8")
    return d


def _loop(model, tok, prompt: str, target: str) -> tuple[float, list[int]]:
    """Mean NLL of the target tokens of ``prompt + " " + target`` and per-token argmax hits: one
    unpadded forward, one position at a time."""
    ids = tok(prompt + " " + target)["input_ids"]
    n = len(tok(prompt)["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    lps, hits = [], []
    for j in range(n, len(ids)):
        row = logits[j - 1]
        lps.append(float(row.log_softmax(-1)[ids[j]]))
        hits.append(int(int(row.argmax()) == ids[j]))
    return -sum(lps) / len(lps), hits


def test_target_scores_equal_a_plain_loop(tiny_model):
    tok = tiny_model.tokenizer
    pairs = [("The capital of France is", "Paris"), ("Danielle Darrieux spoke the language", "English"),
             ("The Eiffel Tower is located in the city of", "Rome London"), ("Apple", "Microsoft")]
    got = target_scores(tiny_model, tok, [p for p, _ in pairs], [t for _, t in pairs], batch_size=3)  # padded
    for (p, t), (nll, hits) in zip(pairs, got):
        want_nll, want_hits = _loop(tiny_model, tok, p, t)
        assert nll == pytest.approx(want_nll, rel=1e-5, abs=1e-5) and hits == want_hits


def test_summary_definitions_by_hand():
    a = {"rewrite": {"nll_new": [1.0], "nll_true": [2.0], "hits": [[1, 0]]},
         "paraphrase": {"nll_new": [1.0, 3.0], "nll_true": [2.0, 2.0], "hits": [[1, 0], [1]]},
         "neighborhood": {"nll_new": [3.0], "nll_true": [1.0], "hits": [[0, 1, 1, 1]]},
         "ngram_entropy": 5.0, "consistency": 0.25}
    b = {"rewrite": {"nll_new": [2.0], "nll_true": [1.0], "hits": [[0]]}, "ngram_entropy": 6.0}
    s = summarize_counterfact([a, b])
    assert s["n"] == 2
    assert s["Efficacy Score"] == pytest.approx(50.0)  # a: new more likely, b: not
    e1, e2, e3 = math.exp(-1), math.exp(-2), math.exp(-3)
    assert s["Efficacy Magnitude"] == pytest.approx(100 * ((e1 - e2) + (e2 - e1)) / 2)
    assert s["Paraphrase Score"] == pytest.approx(50.0)  # only a has paraphrases: one of two prompts
    assert s["Paraphrase Magnitude"] == pytest.approx(100 * ((e1 - e2) + (e3 - e2)) / 2)
    assert s["Neighborhood Score"] == pytest.approx(100.0)  # true answer (nll 1) ahead of the new one (nll 3)
    assert s["Neighborhood Magnitude"] == pytest.approx(100 * (math.exp(-1) - math.exp(-3)))
    assert s["Rewrite acc."] == pytest.approx(100 * (0.5 + 0.0) / 2)
    assert s["Paraphrase acc."] == pytest.approx(100 * 2 / 3)  # MEMIT: all tokens of the record's prompts pooled
    assert s["Neighborhood acc."] == pytest.approx(75.0)
    assert s["Score"] == pytest.approx(3 / (1 / 50 + 1 / 50 + 1 / 100))  # harmonic mean, as summarize.py
    assert s["Generation entropy"] == pytest.approx(550.0) and s["Consistency"] == pytest.approx(25.0)
    empty = summarize_counterfact([{"rewrite": {"nll_new": [1.0], "nll_true": [], "hits": [[1]]}}])
    assert empty["Efficacy Score"] is None and empty["Score"] is None and empty["Rewrite acc."] == 100.0


def test_record_metrics_match_hand_computation(tiny_llama, rome_dir):
    tok = tiny_llama.tokenizer
    facts = load_dataset("counterfact_rome", rome_dir / "counterfact.json")
    items, _, _ = counterfact_items(list(facts), "counterfact_rome", rome_dir / "counterfact.json")
    sc = CounterfactScorer(tiny_llama, generation=False, batch_size=4)
    pres = sc.pre_many(items)
    before = summarize_counterfact([p["memit"] for p in pres])
    # edit the records' facts, and one paraphrase and one neighbourhood answer, so that every token
    # accuracy has hits to count (a random model predicts none of these words)
    extra = [Fact(prompt=facts[0].rephrase[0], target_new="English"),
             Fact(prompt=facts[0].locality["neighborhood"][0].prompt, target_new="French")]
    tiny_llama.edit([*facts, *extra], method="ft-m", **STRONG)
    recs = sc.post_many(items, pres)
    got = summarize_counterfact([r["memit"] for r in recs])
    assert min(got["Rewrite acc."], got["Paraphrase acc."], got["Neighborhood acc."]) > 0

    def nll(p, t):
        return _loop(tiny_llama, tok, p, t)[0]

    per: dict[str, list[float]] = {k: [] for k in ("es", "em", "ps", "pm", "ns", "nm", "ra", "pa", "na")}
    for f in facts:
        new, true = f.target_new, f.ground_truth
        n, t = nll(f.text_prompt, new), nll(f.text_prompt, true)
        per["es"].append(float(t > n))
        per["em"].append(math.exp(-n) - math.exp(-t))
        per["ra"].append(np.mean(_loop(tiny_llama, tok, f.text_prompt, new)[1]))
        para = [(nll(p, new), nll(p, true)) for p in f.rephrase]
        per["ps"].append(np.mean([t > n for n, t in para]))
        per["pm"].append(np.mean([math.exp(-n) - math.exp(-t) for n, t in para]))
        per["pa"].append(np.mean([h for p in f.rephrase for h in _loop(tiny_llama, tok, p, new)[1]]))
        probes = f.locality["neighborhood"]
        assert {p.answer for p in probes} == {true}  # ROME's neighbourhood prompts expect the true object
        neigh = [(nll(p.prompt, new), nll(p.prompt, p.answer)) for p in probes]
        per["ns"].append(np.mean([t < n for n, t in neigh]))
        per["nm"].append(np.mean([math.exp(-t) - math.exp(-n) for n, t in neigh]))
        per["na"].append(np.mean([h for p in probes for h in _loop(tiny_llama, tok, p.prompt, p.answer)[1]]))
    want = {k: 100 * float(np.mean(v)) for k, v in per.items()}
    names = {"es": "Efficacy Score", "em": "Efficacy Magnitude", "ps": "Paraphrase Score", "pm": "Paraphrase Magnitude",
             "ns": "Neighborhood Score", "nm": "Neighborhood Magnitude", "ra": "Rewrite acc.",
             "pa": "Paraphrase acc.", "na": "Neighborhood acc."}
    for k, name in names.items():
        assert got[name] == pytest.approx(want[k], abs=1e-4), name
    tiny_llama.pop()
    # each line keeps the unedited model's numbers ("pre", the papers' Pre-edited row) beside the edited ones
    assert summarize_counterfact([r["memit_pre"] for r in recs]) == before
    assert before["Rewrite acc."] == 0.0 and before["Efficacy Magnitude"] < got["Efficacy Magnitude"]
    assert "ngram_entropy" not in recs[0]["memit"]  # sampling only with with_fluency


def test_tfidf_by_hand(tmp_path):
    docs = ["a cat sat", "The cat ran", "the dog"]  # "a": one character, not a word
    t = Tfidf.fit(docs)
    assert t.vocab == {"cat": 0, "dog": 1, "ran": 2, "sat": 3, "the": 4}
    idf = {"cat": math.log(4 / 3) + 1, "dog": math.log(4 / 2) + 1, "ran": math.log(4 / 2) + 1,
           "sat": math.log(4 / 2) + 1, "the": math.log(4 / 3) + 1}
    assert t.idf == pytest.approx([idf[w] for w in sorted(idf)])
    x = {"cat": 2 * idf["cat"], "sat": idf["sat"]}  # "Cat cat sat zebra": zebra is not in the vocabulary
    y = {"cat": idf["cat"], "ran": idf["ran"]}
    cos = x["cat"] * y["cat"] / math.hypot(*x.values()) / math.hypot(*y.values())
    assert t.similarity("Cat cat sat zebra", "cat ran") == pytest.approx(cos)
    assert math.isnan(t.similarity("zebra", "cat"))
    np.save(tmp_path / "idf.npy", np.array(t.idf))
    (tmp_path / "vocab.json").write_text(json.dumps(t.vocab))
    assert Tfidf.load(tmp_path / "idf.npy", tmp_path / "vocab.json").similarity("Cat cat sat", "cat ran") == \
        pytest.approx(t.similarity("Cat cat sat", "cat ran"))
    with pytest.raises(ValueError, match="IDF"):
        Tfidf({"cat": 3}, [1.0])


def test_rome_file_extras_and_consistency_in_a_run(tiny_llama, rome_dir, tmp_path):
    data = rome_dir / "counterfact.json"
    items, tfidf, used = counterfact_items(list(load_dataset(None, data)), "counterfact_rome", data)
    assert used == "attribute_snippets.json; IDF fit on its texts"
    assert items[0].generation_prompts == _rome_records()[0]["generation_prompts"]
    assert items[0].reference_texts == [s["text"] for s in SNIPPETS[0]["samples"]] and items[1].reference_texts == []
    assert tfidf.vocab == Tfidf.fit(s["text"] for el in SNIPPETS for s in el["samples"]).vocab

    h0 = state_dict_hash(tiny_llama)
    s = run_knowedit(tiny_llama, "counterfact_rome", data, "ft-m", hparams={"num_steps": 1}, out=tmp_path / "r",
                     progress=False, protocol="memit", with_fluency=True)
    assert state_dict_hash(tiny_llama) == h0 and s["bit_exact"] is True
    assert s["protocol"] == "memit" and s["fluency"] == "easyedit" and s["consistency"] == used
    jsonl = tmp_path / "r" / "counterfact_rome-ft-m-single-memit.jsonl"
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    first = lines[0]["post"]["memit"]
    assert [t[:len(p)] for t, p in zip(first["texts"], items[0].generation_prompts)] == items[0].generation_prompts
    assert first["ngram_entropy"] == pytest.approx(n_gram_entropy(first["texts"]))
    expected = tfidf.similarity(" ".join(first["texts"]), " ".join(items[0].reference_texts))
    assert first["consistency"] == pytest.approx(expected)
    assert "consistency" not in lines[1]["post"]["memit"]  # no snippets for its relation/target
    m = s["metrics"]
    assert m["memit"]["Consistency"] == pytest.approx(100 * first["consistency"])
    assert m["memit_pre"]["n"] == 2 and m["Edit Succ."] is not None  # the KnowEdit metrics stay in the same lines
    md = (tmp_path / "r" / "counterfact_rome-ft-m-single-memit.md").read_text()
    assert "Generation entropy: top-5 samples" in md and "| Consistency |" in md
    assert "Fluency: EasyEdit mode" not in md  # the KnowEdit Fluency is not scored under this protocol


def test_sequential_easyedit_run_resumes_and_keeps_protocols_apart(tiny_llama, tmp_path):
    kw = dict(dataset="counterfact_easyedit", data=EASYEDIT, method="ft-m", n=4, mode="sequential", batch_size=2,
              checkpoints=[2], hparams={"num_steps": 1}, out=tmp_path, progress=False)
    s = run_knowedit(tiny_llama, protocol="memit", **kw)
    assert set(s["checkpoints"]) == {"2", "4"} and s["checkpoints"]["2"]["memit"]["n"] == 2
    assert s["metrics"]["memit"]["Neighborhood Score"] is not None
    assert s["metrics"]["memit"]["Generation entropy"] is None
    again = run_knowedit(tiny_llama, protocol="memit", **kw)
    assert again["edits_computed"] == 0 and again["metrics"]["memit"] == s["metrics"]["memit"]
    plain = run_knowedit(tiny_llama, **kw)  # the KnowEdit protocol: its own files, no memit block
    assert "memit" not in plain["metrics"] and "protocol" not in plain
    assert (tmp_path / "counterfact_easyedit-ft-m-sequential-memit.jsonl").exists()
    assert (tmp_path / "counterfact_easyedit-ft-m-sequential.jsonl").exists()
    report = (tmp_path / "report.md").read_text()
    assert "[memit protocol]" in report and "### counterfact_easyedit: CounterFact protocol" in report
    with pytest.raises(ValueError, match="protocol"):
        run_knowedit(tiny_llama, protocol="rome", **kw)
    with pytest.raises(ValueError, match="ConvSent"):
        run_knowedit(tiny_llama, "convsent", KNOWEDIT_DIR / "ConvSent.json", "ft-m", out=tmp_path, protocol="memit")


def test_cli_eval_counterfact_reads_the_format_from_the_file(tiny_llama_dir, tmp_path, capsys):
    from editwrap.cli import main
    from editwrap.evals.counterfact import detect_dataset

    assert detect_dataset("counterfact:rome") == "counterfact_rome"
    assert detect_dataset(EASYEDIT) == "counterfact_easyedit"
    out = tmp_path / "cli"
    assert main(["eval", "counterfact", "--model", str(tiny_llama_dir), "--data", str(EASYEDIT), "--method", "ft-m",
                 "--n", "2", "--hparam", "num_steps=1", "--out", str(out), "--no-progress"]) == 0
    assert "CounterFact protocol" in capsys.readouterr().out
    summary = json.loads((out / "counterfact_easyedit-ft-m-single-memit.summary.json").read_text())
    assert summary["protocol"] == "memit" and summary["metrics"]["memit"]["n"] == 2
    assert main(["eval", "counterfact", "--model", str(tiny_llama_dir), "--data", str(KNOWEDIT_DIR / "ConvSent.json"),
                 "--method", "ft-m", "--out", str(out)]) == 2
    assert "scores fact records" in capsys.readouterr().err


@pytest.mark.slow
def test_rome_on_embedded_model_wins_the_probability_comparison(embedded, tmp_path):
    """ROME, one fact at a time, on 3 EasyEdit CounterFact records: after each edit the new object is
    more probable than the true one on the edit prompt (it rarely is before), generation entropy is
    measured, and every pop is exact."""
    s = run_knowedit(embedded, "counterfact_easyedit", EASYEDIT, "rome", n=3, out=tmp_path, progress=False,
                     protocol="memit", with_fluency=True)
    post, pre = s["metrics"]["memit"], s["metrics"]["memit_pre"]
    assert s["bit_exact"] is True and post["n"] == pre["n"] == 3
    assert post["Efficacy Score"] >= 66.6 and post["Efficacy Score"] > pre["Efficacy Score"]
    assert post["Efficacy Magnitude"] > pre["Efficacy Magnitude"]
    assert post["Rewrite acc."] > pre["Rewrite acc."]
    assert post["Generation entropy"] is not None and pre["Generation entropy"] is not None
    assert post["Consistency"] is None  # EasyEdit's file has no reference texts
