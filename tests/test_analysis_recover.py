"""Edit and recover (editwrap.analysis.recover): pop() restores the base exactly, editing back does not."""
from __future__ import annotations

import json
import math

import pytest
import torch

from editwrap import Edit, Fact
from editwrap.analysis.recover import mean_kl, recover_study, stack_distance, unrelated_prompts
from editwrap.entries.delta import DeltaEntry

from .conftest import build_tiny

FAST_ROME = dict(mom2_n_tokens=300, v_num_grad_steps=3, context_templates=[(3, 2)])
LOC = {"Relation_Specificity": [{"prompt": "Apple and Google", "answer": "Paris"},
                                {"prompt": "The capital of France is", "answer": "Paris"}]}
FACTS = [Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome",
              ground_truth="Paris", locality=LOC),
         Fact(prompt="Microsoft was founded in", subject="Microsoft", target_new="Berlin", locality=LOC)]
KL_PROMPTS = ["The capital of France is", "Apple and Google", "Paris is a city in", "London Berlin Rome"]


def test_stack_distance_sums_the_deltas_before_the_norm(tiny_llama):
    m = tiny_llama
    name = "model.layers.1.mlp.down_proj"
    w = m.get_submodule(name).weight
    u, v = torch.zeros(w.shape[0], 1), torch.zeros(w.shape[1], 1)
    u[0, 0], v[0, 0] = 3.0, 1.0
    f = [Fact(prompt="p", target_new="x")]
    assert stack_distance(m) == 0.0
    m.push(Edit("synthetic", f, {}, DeltaEntry({name: {"U": u, "V": v}})))
    assert stack_distance(m) == pytest.approx(3.0)
    d = torch.zeros_like(w)
    d[0, 0] = -3.0  # exactly cancels the first delta: ‖Σ ΔW‖ = 0 although each edit has norm 3
    m.push(Edit("synthetic", f, {}, DeltaEntry({name: {"D": d}})))
    assert stack_distance(m) == pytest.approx(0.0, abs=1e-12)
    d2 = torch.zeros_like(w)
    d2[1, 1] = 4.0
    m.pop()
    m.push(Edit("synthetic", f, {}, DeltaEntry({name: {"D": d2}})))
    assert stack_distance(m) == pytest.approx(5.0)
    m.clear()


def test_kl_and_unrelated_prompts():
    lp = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64).log()
    assert mean_kl(lp, lp) == 0.0
    q = torch.tensor([[0.25, 0.75], [0.9, 0.1]], dtype=torch.float64).log()
    assert mean_kl(lp, q) == pytest.approx((0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75)) / 2)
    facts = [Fact(prompt=f"q{i}", target_new="x", locality={"R": [{"prompt": f"u{i % 2}", "answer": "a"}]})
             for i in range(5)]
    assert unrelated_prompts(facts, 2, 10) == ["u0", "u1"] and unrelated_prompts(facts, 2, 1) == ["u0"]


@pytest.mark.parametrize("method,hp", [("rome", FAST_ROME), ("ft-m", {"num_steps": 2})])
def test_pop_is_exact_and_editing_back_is_not(tiny_tokenizer, method, hp):
    m = build_tiny("llama", tiny_tokenizer)
    res = recover_study(m, FACTS, method, hp, kl_prompts=KL_PROMPTS, progress=False)
    assert len(m.stack) == 0
    for row in res["facts"]:
        assert row["stack_depth_edit_back"] == 2 and row["conflict_policy"] == "stack"
        pop, back = row["pop"], row["edit_back"]
        assert pop["weight_distance"] == 0 and pop["kl"] == 0 and pop["logits_equal"] and pop["agreement"] == 1
        assert pop["same_answer"] and (pop["logp_new"], pop["logp_back"]) == (row["unedited_logp_new"],
                                                                               row["unedited_logp_back"])
        assert back["logp_back"] != row["unedited_logp_back"]
        assert back["weight_distance"] > 1e-3 and back["kl"] > 1e-9 and not back["logits_equal"]
        assert row["edited"]["weight_distance"] > 0
    s = res["summary"]
    assert s["pop"]["exactly_base"] == "2/2" and s["edit_back"]["exactly_base"] == "0/2"
    json.dumps(res)


def test_cli_writes_json_and_png(tiny_llama_dir, tmp_path, capsys):
    from editwrap.cli import main

    recs = [{"subject": s, "prompt": f"The capital of {s} is", "target_new": "Rome", "ground_truth": ["Paris"],
             "locality": {"Relation_Specificity": [{"prompt": f"{s} {t}", "ground_truth": ["Europe"]}
                                                   for t in ("is in", "and")]}}
            for s in ("France", "Microsoft", "Google", "Apple")]
    data = tmp_path / "knowedit.json"
    data.write_text(json.dumps(recs))
    out = tmp_path / "recover"
    assert main(["analyze", "recover", "--model", str(tiny_llama_dir), "--data", str(data), "--n", "2", "--n-kl", "3",
                 "--method", "ft-m", "--hparam", "num_steps=2", "--back-to", "truth", "--out", str(out)]) == 0
    res = json.loads((out / "recover.json").read_text())
    assert res["n_facts"] == 2 and res["kl_prompts"] == ["Google is in", "Google and", "Apple is in"]
    assert all(r["edit_back_target"] == "Paris" for r in res["facts"])
    assert res["summary"]["pop"]["weight_distance"] == 0 and res["summary"]["pop"]["kl"] == 0
    assert (out / "recover.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out
