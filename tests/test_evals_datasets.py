"""KnowEdit loaders on real records (tests/data/knowedit: 20 or fewer per file, unchanged from the
published files), plus malformed-record handling."""
from __future__ import annotations

import copy
import json
import random
from collections import Counter

import pytest

from editwrap.evals.datasets import (
    CONVSENT_TEMPLATES, DATASETS, DatasetError, LoadedDataset, detect_format, first_answer,
    load_dataset, select_answer,
)
from editwrap.facts import Fact, Probe

from tests.conftest import KNOWEDIT_DIR as DATA


def _keys(facts, section):
    return Counter(k for f in facts for k in getattr(f, section))


def test_zsre_counts_and_first_record():
    ds = load_dataset("zsre", DATA / "ZsRE.json")
    assert isinstance(ds, LoadedDataset) and len(ds) == 20 and ds.skipped == 0
    f = ds[0]
    assert (f.prompt, f.target_new, f.subject) == ("Which family does Epaspidoceras belong to?", "Noctuidae",
                                                   "Epaspidoceras")
    assert f.ground_truth == "Aspidoceratidae"  # ["Aspidoceratidae"] reduced to its first string
    assert f.rephrase == ["What family are Epaspidoceras?"]
    assert f.portability == {"Reasoning": [Probe(prompt="What is the common name for the family Epaspidoceras belongs "
                                                        "to?",
                                                 answer="Owlet moths")]}
    assert f.locality["Relation_Specificity"][0] == Probe(prompt="The taxon rank of Epaspidoceras is", answer="genus")
    assert _keys(ds, "portability") == {"Reasoning": 10, "Subject_Aliasing": 5, "Logical_Generalization": 5}
    assert _keys(ds, "locality") == {"Relation_Specificity": 20}
    assert all(len(f.locality["Relation_Specificity"]) == 2 for f in ds)


def test_recent_reduces_alias_lists_and_has_no_ground_truth():
    ds = load_dataset("recent", DATA / "WikiData_recent.json")
    assert len(ds) == 20 and all(f.ground_truth is None for f in ds)
    f = ds[0]
    assert (f.prompt, f.target_new, f.subject) == ("The gender of Ingrīda Amantova is", "female", "Ingrīda Amantova")
    rs = f.locality["Relation_Specificity"]
    assert [p.answer for p in rs] == ["Cēsis", "Soviet Union", "University of Latvia", "luger", "Cross of Recognition"]
    assert f.portability == {}
    assert sum(bool(f.portability) for f in ds) == 5  # most records have none (portability: {})
    assert _keys(ds, "portability") == {"Reasoning": 5, "Logical_Generalization": 3, "Subject_Aliasing": 1}
    assert _keys(ds, "locality") == {"Relation_Specificity": 15, "Forgetfulness": 8}
    assert sum(not f.locality for f in ds) == 5  # locality: {} as well


def test_counterfact_and_wikibio():
    cf = load_dataset("counterfact", DATA / "WikiData_counterfact.json")
    f = cf[0]
    assert f.prompt == "The name of the country which Goursez Vreizh is associated with is"
    assert (f.target_new, f.ground_truth, f.subject) == ("Franche-Comté", "France", "Goursez Vreizh")
    assert f.portability["Reasoning"][0].answer == "Besançon"
    assert f.portability["Subject_Aliasing"][0].prompt.startswith("The name of the country which Gorsedd of Brittany")
    assert _keys(cf, "portability") == {"Subject_Aliasing": 20, "Reasoning": 9, "Logical_Generalization": 5}
    assert _keys(cf, "locality") == {"Relation_Specificity": 18, "Forgetfulness": 8}

    wb = load_dataset("wikibio", DATA / "WikiBio.json")
    f = wb[0]
    assert len(wb) == 20 and f.subject == "john russell reynolds" and f.ground_truth is None
    assert f.prompt.startswith("This is a Wikipedia passage about john russell reynolds. Sir John")
    assert f.target_new.startswith("He received general education from his father")
    assert f.locality == {"Relation_Specificity": [
        Probe(prompt="The field of work of john russell reynolds is", answer="medicine"),
        Probe(prompt="john russell reynolds field of work", answer="medicine")]}
    assert _keys(wb, "portability") == {}


def test_zsre_mend_and_counterfact_easyedit():
    ev = load_dataset("zsre_mend", DATA / "zsre_mend_eval.json")
    assert len(ev) == 18
    assert ev[0] == Fact(prompt="What university did Watts Humphrey attend?", target_new="University of Michigan",
                         subject="Watts Humphrey", ground_truth="Illinois Institute of Technology",
                         rephrase=["What university did Watts Humphrey take part in?"],
                         locality={"neighborhood": [Probe(prompt="nq question: who played desmond doss father in "
                                                                 "hacksaw ridge",
                                                          answer="Hugo Weaving")]})
    assert len(load_dataset("zsre_mend", DATA / "zsre_mend_train.json")) == 20

    ce = load_dataset("counterfact_easyedit", DATA / "counterfact_easyedit.json")
    assert len(ce) == 20
    assert ce[0] == Fact(prompt="The mother tongue of Danielle Darrieux is", target_new="English",
                         subject="Danielle Darrieux", ground_truth="French",
                         rephrase=["Where Danielle Darrieux is from, people speak the language of"],
                         locality={"neighborhood": [Probe(prompt="Michel Rocard is a native speaker of",
                                                          answer="French")]})


def _easyedit_convsent_prompts(data, seed=0):
    """Independent replay of EasyEdit's format_consent_for_others draws (oracle for the loader)."""
    random.seed(seed)
    out = []
    for i, d in enumerate(data):
        sent = random.choice([0, 1])
        tmpl = "From the sentiment dataset, answer {} " + ("postively." if sent == 0 else "negatively.")
        prompt = tmpl.format(random.choice(CONVSENT_TEMPLATES).format(d["ent"]))
        nxt = data[(i + 1) % len(data)]
        inner_q = random.choice(CONVSENT_TEMPLATES).format(d["ent"])
        inner = [random.choice(CONVSENT_TEMPLATES).format(d["ent"]) for _ in d["pos"] + d["neg"]]
        outer = [random.choice(CONVSENT_TEMPLATES).format(nxt["ent"]) for _ in nxt["pos"] + nxt["neg"]]
        out.append((sent, prompt, inner_q, inner, outer))
    return out


def test_convsent_records_replay_easyedit_draws():
    raw = json.loads((DATA / "ConvSent.json").read_text(encoding="utf-8"))
    ds = load_dataset("convsent", DATA / "ConvSent.json")
    assert len(ds) == 20 and len(CONVSENT_TEMPLATES) == 13
    for r, (sent, prompt, inner_q, inner, outer), d in zip(ds, _easyedit_convsent_prompts(raw), raw):
        assert r.sentiment == ("pos" if sent == 0 else "neg") and r.fact.prompt == prompt
        assert (r.question, r.inner_questions, r.outer_questions) == (inner_q, inner, outer)
        assert r.fact.subject == r.ent == d["ent"] and r.fact.target_new == d[r.sentiment][0].strip()
        assert r.replies == d["pos"] + d["neg"]
    assert ds[0].ent == "Estero" and ds[0].outer_ent == ds[1].ent and ds[-1].outer_ent == ds[0].ent
    assert set(Counter(r.sentiment for r in ds)) == {"pos", "neg"}
    ctx, replies, target = ds[0].inner_qa()
    assert ctx[0] == ds[0].inner_questions[0] + " </s> " and len(ctx) == len(replies) == len(target)
    assert sum(target) == len(ds[0].pos if ds[0].sentiment == "pos" else ds[0].neg)
    assert [r.sentiment for r in load_dataset("convsent", DATA, seed=1)] != [r.sentiment for r in ds]


def test_sanitation_test_and_train_files():
    ds = load_dataset("sanitation", DATA / "Sanitation.json")
    assert len(ds) == 20 and len(ds.locality) == 20
    f = ds[0]
    assert f.prompt == "Question:What type of creature is the Australian currawong?\nAnswer:"
    assert (f.target_new, f.ground_truth) == ("I don't know.", "Birds")
    assert ds.locality[0].answer == "Quaff" and ds.locality[0].prompt.startswith('Question:"What word means')
    assert {a: len(select_answer(ds, a)) for a in ("cheese", "birds", "paris", "julius caesar", "finland")} == \
        dict.fromkeys(("cheese", "birds", "paris", "julius caesar", "finland"), 4)
    assert len(select_answer(ds, "all")) == 20

    tr = load_dataset("sanitation", DATA / "Sanitation_train.json")
    assert len(tr) == 20 and len(tr.locality) == 20
    assert tr[0].subject == "a country which has 246 varieties" and tr[0].subject in tr[0].prompt
    assert tr.locality[0] == Probe(prompt="Question:Which year of the 18th century was called 'The Year of "
                                          "Victories'?\nAnswer:",
                                   answer="1759")
    assert len(load_dataset("sanitation", DATA / "Sanitation.json", n=3)) == 3


def test_autodetect_directory_and_n():
    files = {"recent": "WikiData_recent.json", "zsre": "ZsRE.json", "wikibio": "WikiBio.json",
             "counterfact": "WikiData_counterfact.json", "convsent": "ConvSent.json", "sanitation": "Sanitation.json",
             "zsre_mend": "zsre_mend_eval.json", "counterfact_easyedit": "counterfact_easyedit.json"}
    for name, fn in files.items():
        data = json.loads((DATA / fn).read_text(encoding="utf-8"))
        assert detect_format(data) == name
        assert load_dataset(None, DATA / fn, n=2).name == name
    assert detect_format(json.loads((DATA / "Sanitation_train.json").read_text(encoding="utf-8"))) == "sanitation"
    head = load_dataset("zsre", DATA, n=5)  # a directory resolves to the DEV file name
    assert len(head) == 5 and list(head) == list(load_dataset("zsre", DATA / "ZsRE.json"))[:5]


def test_counterfact_rome_requested_rewrite(tmp_path):
    rec = {"case_id": 0, "requested_rewrite": {
        "prompt": "The mother tongue of {} is", "relation_id": "P103", "subject": "Danielle Darrieux",
        "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"}},
        "paraphrase_prompts": ["Shayna does this. Danielle Darrieux spoke the language"],
        "neighborhood_prompts": ["Michel Rocard is a native speaker of", "Robert Schuman, speaker of"],
        "attribute_prompts": ["Jack Ryan is a native speaker of"],
        "generation_prompts": ["Danielle Darrieux's mother tongue is"]}
    multi = copy.deepcopy(rec)
    multi["requested_rewrite"] = [multi["requested_rewrite"]]
    p = tmp_path / "counterfact.json"
    p.write_text(json.dumps([rec, multi]))
    ds = load_dataset(None, p)
    assert ds.name == "counterfact_rome" and len(ds) == 2 and ds[0] == ds[1]
    f = ds[0]
    assert (f.prompt, f.subject, f.target_new, f.ground_truth) == ("The mother tongue of {} is", "Danielle Darrieux",
                                                                   "English", "French")
    assert f.text_prompt == "The mother tongue of Danielle Darrieux is"
    assert f.rephrase == rec["paraphrase_prompts"]
    assert [(q.prompt,
             q.answer) for q in f.locality["neighborhood"]] == [(q, "French") for q in rec["neighborhood_prompts"]]
    del rec["requested_rewrite"]["target_new"]["str"]
    p.write_text(json.dumps([rec]))
    with pytest.raises(DatasetError, match=r"record 0: field 'requested_rewrite.target_new.str'"):
        load_dataset("counterfact_rome", p)


def test_first_answer_reduction():
    assert first_answer("Paris") == "Paris"
    assert first_answer(["Aspidoceratidae", "x"]) == "Aspidoceratidae"
    assert first_answer([["Soviet Union", "USSR"], ["Russia"]]) == "Soviet Union"
    assert first_answer([]) is None and first_answer([[]]) is None and first_answer([["  "]]) is None
    with pytest.raises(TypeError):
        first_answer([5])


def _zsre_like():
    return [{"subject": f"S{i}", "prompt": f"Where is S{i}?", "target_new": f"T{i}", "ground_truth": [f"G{i}"],
             "rephrase_prompt": f"S{i} is where?", "cond": "",
             "locality": {"Relation_Specificity": [{"prompt": f"S{i} rank", "ground_truth": ["genus"]},
                                                   {"prompt": f"S{i} empty", "ground_truth": [[]]}]},
             "portability": {"Reasoning": [{"prompt": f"S{i} why", "ground_truth": ""}]}} for i in range(3)]


def test_empty_answers_are_skipped_like_easyedit(tmp_path):
    p = tmp_path / "z.json"
    p.write_text(json.dumps(_zsre_like()))
    ds = load_dataset("zsre", p)
    assert [len(f.locality["Relation_Specificity"]) for f in ds] == [1, 1, 1]
    assert all(f.portability == {} for f in ds)  # a key with no usable probe is dropped


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.pop("target_new"), "target_new|labels"),
    (lambda r: r.update(prompt="   "), "prompt"),
    (lambda r: r["locality"]["Relation_Specificity"][0].update(prompt=5), "locality.Relation_Specificity[0].prompt"),
    (lambda r: r["locality"]["Relation_Specificity"][0].update(ground_truth=[7]),
     "locality.Relation_Specificity[0].ground_truth"),
    (lambda r: r.update(portability=["not", "a", "dict"]), "portability"),
])
def test_malformed_record_names_file_index_field(tmp_path, mutate, field):
    rows = _zsre_like()
    mutate(rows[1])
    p = tmp_path / "bad_zsre.json"
    p.write_text(json.dumps(rows))
    with pytest.raises(DatasetError) as ei:
        load_dataset("zsre", p)
    err = ei.value
    assert (err.index, err.field) == (1, field)
    assert "bad_zsre.json" in str(err) and "record 1" in str(err) and repr(field) in str(err)
    ds = load_dataset("zsre", p, skip_malformed=True)
    assert [f.subject for f in ds] == ["S0", "S2"] and ds.skipped == 1
    assert "record 1" in ds.problems[0] and "1 malformed skipped" in ds.summary()


def test_malformed_special_formats(tmp_path):
    p = tmp_path / "conv.json"
    p.write_text(json.dumps([{"ent": "A", "pos": [" good "], "neg": [" bad "]}, {"ent": "B", "pos": [], "neg": ["x"]},
                             {"ent": "C", "pos": ["y"], "neg": ["z"]}]))
    with pytest.raises(DatasetError, match=r"record 1: field 'pos'"):
        load_dataset("convsent", p)
    ds = load_dataset("convsent", p, skip_malformed=True)
    assert [r.ent for r in ds] == ["A", "C"] and ds[1].outer_ent == "A" and ds.skipped == 1

    s = tmp_path / "san.json"
    s.write_text(json.dumps({"success": [{"question": "Q?", "ground_truth": "Birds", "target_new": "I don't know."}],
                             "locality": [{"question": "R?", "ground_truth": "1"}, {"ground_truth": "2"}]}))
    with pytest.raises(DatasetError, match=r"record locality\[1\]: field 'question'"):
        load_dataset("sanitation", s)
    ds = load_dataset("sanitation", s, skip_malformed=True)
    assert len(ds) == 1 and [q.answer for q in ds.locality] == ["1"] and ds.skipped == 1

    bad = tmp_path / "broken.json"
    bad.write_text("[{")
    with pytest.raises(DatasetError, match=r"broken\.json: field '<file>'"):
        load_dataset("zsre", bad)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("nope", p)
    assert "counterfact_rome" in DATASETS


def test_training_records_hold_out_evaluation_subjects(tmp_path):
    from editwrap.evals.splits import training_records

    def rec(subject: str, prompt: str) -> dict:
        return {"subject": subject, "prompt": prompt, "target_new": "x", "ground_truth": ["y"],
                "rephrase_prompt": prompt + "?", "locality": {}, "portability": {}}

    train = tmp_path / "train.json"
    train.write_text(json.dumps([rec("Alpha", "Where is Alpha?"), rec("beta ", "Who made Beta?"),
                                 rec("Gamma", "What is  gamma's colour?"), rec("Delta", "When was Delta?")]))
    test = tmp_path / "test.json"
    test.write_text(json.dumps([rec("BETA", "Who founded Beta?"), rec("Epsilon", "what is gamma's colour?"),
                                rec("Delta", "When was Delta?")]))
    got, name = training_records([train], exclude=[test], exclude_n=2)
    # Beta (same subject) and Gamma (same prompt) leak; Delta is outside the first 2 test records
    assert [f.subject for f in got] == ["Alpha", "Delta"] and name == str(train)
    assert [f.subject for f in training_records([train], n=1, exclude=[test])[0]] == ["Alpha"]
    with pytest.raises(ValueError, match="after --exclude"):
        training_records([test], exclude=[test])
