"""SERAC: retrieval-cache entries (scope classifier + counterfactual model) on the text plane."""
from __future__ import annotations

import json

import pytest
import torch

from editwrap import state_dict_hash
from editwrap.methods.serac.entry import SeracEntry
from editwrap.facts import Fact, Probe
from editwrap.methods.serac.hparams import SeracTrainConfig
from editwrap.methods.serac import load_artifact, train_serac
from editwrap.methods.serac.artifact import cf_text

PEOPLE = [("Marie Curie", "physicist", "Warsaw"), ("Isaac Newton", "mathematician", "Woolsthorpe"),
          ("Ada Lovelace", "writer", "London"), ("Alan Turing", "logician", "Maida Vale"),
          ("Nikola Tesla", "inventor", "Smiljan"), ("Charles Darwin", "naturalist", "Shrewsbury"),
          ("Frida Kahlo", "painter", "Coyoacan"), ("Leo Tolstoy", "novelist", "Yasnaya Polyana"),
          ("Johann Bach", "composer", "Eisenach"), ("Rosalind Franklin", "chemist", "Notting Hill")]
OTHER = ["What is the capital of Japan?", "How many legs does a spider have?", "Who wrote Hamlet?",
         "What colour is the sky on a clear day?", "Which ocean is the largest?"]


def _records() -> list[Fact]:
    out = []
    for i, (who, job, town) in enumerate(PEOPLE):
        out.append(Fact(prompt=f"What was the occupation of {who}?", target_new=job,
                        rephrase=[f"{who} worked as what?"],
                        locality={"unrelated": [Probe(prompt=OTHER[i % len(OTHER)], answer="x")]}))
        out.append(Fact(prompt=f"Where was {who} born?", target_new=town,
                        rephrase=[f"In which town was {who} born?"]))
    return out


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_tokenizer):
    from tests.conftest import build_tiny

    model = build_tiny("llama", tiny_tokenizer)
    out = tmp_path_factory.mktemp("serac")
    cfg = SeracTrainConfig(cls_steps=300, cf_steps=3, cf_batch_size=2, val_fraction=0.0)
    info = train_serac(model, _records(), out, cfg, progress=False, data_name="toy")
    return out, info


def test_classifier_separates_scope(artifact):
    out, info = artifact
    assert info["classifier_train"]["acc"] >= 0.9
    art = load_artifact(out)
    keys = art.embed(["What was the occupation of Marie Curie?", "Where was Alan Turing born?"])
    p = art.classifier.matrix(keys, art.embed(["Marie Curie worked as what?", "Who wrote Hamlet?",
                                               "In which town was Alan Turing born?"]))
    assert p[0, 0] > 0.5 > p[0, 1]       # rephrase of edit 0 in scope of edit 0 only
    assert p[1, 0] < 0.5 and p[1, 1] < 0.5  # unrelated question out of scope
    assert p[2, 1] > 0.5 > p[2, 0]
    meta = json.loads((out / "serac.json").read_text())
    assert meta["info"]["cf_modules"] and meta["artifact_id"]


def _fact() -> Fact:
    return Fact(prompt="What was the occupation of Marie Curie?", target_new="pilot")


def test_routing_generate_and_loglikelihood(artifact, tiny_llama):
    out, _ = artifact
    tiny_model = tiny_llama
    h0 = state_dict_hash(tiny_model)
    q_in, q_out = "Marie Curie worked as what?", "Who wrote Hamlet?"
    base_in, base_out = tiny_model.generate_text([q_in, q_out], max_new_tokens=4)
    ll_out = tiny_model.loglikelihood(q_out, " Paris")
    edit = tiny_model.edit(_fact(), method="serac", artifact=str(out))
    assert isinstance(edit.entry, SeracEntry)
    text, m = tiny_model._route(q_in)
    assert m is not tiny_model and text == cf_text("What was the occupation of Marie Curie? pilot", q_in)
    assert tiny_model._route(q_out) == (q_out, tiny_model)
    got_in, got_out = tiny_model.generate_text([q_in, q_out], max_new_tokens=4)
    enc = tiny_model.tokenizer(text, return_tensors="pt")
    ref = m.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tiny_model.tokenizer.pad_token_id)
    assert got_in == tiny_model.tokenizer.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert got_out == base_out
    assert tiny_model.loglikelihood(q_out, " Paris") == ll_out
    ids = tiny_model.tokenizer(text)["input_ids"]
    cont = tiny_model.tokenizer(" pilot")["input_ids"]
    logp = torch.log_softmax(m(input_ids=torch.tensor([ids + cont])).logits[0, len(ids) - 1:-1], -1)
    ref_ll = float(logp.gather(1, torch.tensor(cont)[:, None]).sum())
    assert tiny_model.loglikelihood(q_in, " pilot") == pytest.approx(ref_ll, abs=1e-5)  # scored by the cf model
    edit.pop()
    assert tiny_model.generate_text([q_in, q_out], max_new_tokens=4) == [base_in, base_out]
    assert state_dict_hash(tiny_model) == h0 and len(tiny_model.stack) == 0


def test_push_pop_save_load_compose(artifact, tiny_llama, tmp_path):
    out, _ = artifact
    m = tiny_llama
    h0 = state_dict_hash(m)
    q = ["Marie Curie worked as what?", "In which town was Alan Turing born?", "Which ocean is the largest?"]
    base = m.generate_text(q, max_new_tokens=3)
    m.edit(Fact(prompt="The Eiffel Tower is located in", subject="Eiffel Tower", target_new="Rome"),
               method="ft-m", num_steps=2)
    with_delta = m.generate_text(q, max_new_tokens=3)
    s1 = m.edit(_fact(), method="serac", artifact=str(out))
    m.edit(Fact(prompt="Where was Alan Turing born?", target_new="Paris"), method="serac", artifact=str(out))
    m.edit(Fact(prompt="The capital of France is", target_new="Berlin"), method="ice")
    routed = [m._route(x) for x in q]
    assert routed[0][1] is not m and "Marie Curie" in routed[0][0]
    assert routed[1][1] is not m and "Alan Turing born? Paris" in routed[1][0]  # top cache routes for both
    assert routed[2][1] is m and routed[2][0].startswith("New Fact: The capital")  # out of scope: prompt entry
    full = m.generate_text(q, max_new_tokens=3)
    m.stack.save(tmp_path / "stk")
    saved = json.loads((tmp_path / "stk" / "edits.json").read_text())
    assert [e["kind"] for e in saved["edits"]][1:3] == ["cache", "cache"]
    with pytest.warns(UserWarning, match="computed with it present"):
        m.remove(s1)  # cache entries are order-independent
    assert m._route(q[0])[1] is m
    m.pop()
    m.pop()
    assert m.generate_text(q, max_new_tokens=3) == with_delta
    m.pop()
    assert state_dict_hash(m) == h0 and m.generate_text(q, max_new_tokens=3) == base
    loaded = m.compose(tmp_path / "stk")
    assert [e.entry.kind for e in loaded][1:3] == ["cache", "cache"]
    assert torch.equal(loaded[1].entry.keys, s1.entry.keys)
    assert m.generate_text(q, max_new_tokens=3) == full
    m.clear()
    assert state_dict_hash(m) == h0


def test_missing_artifact_and_changed_artifact(tiny_llama, tmp_path, artifact):
    with pytest.raises(ValueError, match="trained artifact"):
        tiny_llama.edit(_fact(), method="serac")
    with pytest.raises(FileNotFoundError):
        tiny_llama.edit(_fact(), method="serac", artifact=str(tmp_path))
    e = tiny_llama.compute_edit(_fact(), method="serac", artifact=str(artifact[0]))
    bad = SeracEntry(e.entry.facts, e.entry.keys, e.entry.artifact_path, "deadbeef")
    with pytest.raises(ValueError, match="changed"):
        bad.attach(tiny_llama, "k")
    assert len(tiny_llama.stack) == 0


def test_cli_train_serac_registered():
    from editwrap.cli import build_parser

    a = build_parser().parse_args(["train", "serac", "--data", "x.json", "--out", "o", "--cf-steps", "0"])
    assert a.cf_steps == 0 and a.func.__name__ == "cmd_train_serac"
    assert build_parser().parse_args(["train", "mend", "--data", "x", "--out", "o"]).func.__name__ == "cmd_train_mend"


def test_cross_domain_run_and_report(artifact, tiny_llama, tmp_path):
    from editwrap.evals.runner import run_knowedit, trained_source
    from tests.conftest import KNOWEDIT_DIR

    src = tmp_path / "art"
    src.mkdir()
    for f in ("serac.safetensors", "serac.json"):
        data = (artifact[0] / f).read_bytes()
        if f == "serac.json":
            meta = json.loads(data)
            meta["info"]["data"] = "/x/zsre_mend_train.json"
            data = json.dumps(meta).encode()
        (src / f).write_bytes(data)
    assert trained_source(src) == "zsre"
    for data, name in (("/x/ZsRE.json,/x/WikiData_recent.json,/x/WikiData_counterfact.json", "mixed"),
                       ("/x/ZsRE.json,/x/zsre_mend_train.json,/x/WikiData_recent.json", "zsre+recent")):
        other = tmp_path / name
        other.mkdir()
        (other / "serac.json").write_text(json.dumps({"info": {"data": data}}))
        assert trained_source(other) == name
    s = run_knowedit(tiny_llama, "recent", KNOWEDIT_DIR / "WikiData_recent.json", "serac", n=2, out=tmp_path / "r",
                     trained_on=src, progress=False)
    assert s["trained_on"] == "zsre" and s["metrics"]["n"] == 2
    assert (tmp_path / "r" / "recent-serac-single-from-zsre.summary.json").is_file()
    report = (tmp_path / "r" / "report.md").read_text()
    assert "ZsRE ⇒ WikiData_recent" in report and len(tiny_llama.stack) == 0
    with pytest.raises(ValueError, match="takes no trained artifact"):
        run_knowedit(tiny_llama, "recent", KNOWEDIT_DIR / "WikiData_recent.json", "ft-m", n=1, out=tmp_path / "r2",
                     trained_on=src, progress=False)


def test_routing_over_many_entries_picks_the_right_row(artifact, tiny_llama):
    """One embedding and one classifier call over all entries' keys: the best key's own entry and
    row answer, whichever entry (and position in a batched entry) holds it."""
    out, _ = artifact
    m = tiny_llama
    facts = [Fact(prompt=f"Where was {who} born?", target_new="Paris") for who, _, _ in PEOPLE[:5]]
    m.edit(facts[:3], method="serac", artifact=str(out))  # one entry, three rows
    for f in facts[3:]:
        m.edit(f, method="serac", artifact=str(out))
    art = load_artifact(out)
    for who, _, _ in PEOPLE[:5]:
        q = f"In which town was {who} born?"
        p = art.classifier.matrix(art.embed([f.text_prompt for f in facts]), art.embed([q]))[0]
        text, routed = m._route(q)
        assert routed is not m and text == cf_text(f"{facts[int(p.argmax())].text_prompt} Paris", q)
    assert m._route("Which ocean is the largest?")[1] is m
    m.clear()
