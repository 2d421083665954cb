"""RSim (editwrap.analysis.rsim): the metric on hand-computed overlaps, the locator, and the command."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch

from editwrap import Fact
from editwrap.analysis.rsim import (build_items, layer_attribution, pick_case, rsim, rsim_curve, set_similarity,
                                    top_layers)
from editwrap.arch import arch_of
from editwrap.ops.hooks import patch_output

from .conftest import build_tiny


def test_top_layers_and_set_similarity():
    assert top_layers([0.1, 0.5, 0.5, 0.2], 2) == {1, 2} and top_layers([1, 1, 1], 2) == {0, 1}  # ties: lower layer
    a, b = frozenset({0, 1}), frozenset({1, 2})
    assert set_similarity(a, b) == pytest.approx(1 / 3) and set_similarity(a, b, "overlap") == 0.5
    assert set_similarity(a, a) == 1 and set_similarity(frozenset(), frozenset()) == 1
    with pytest.raises(ValueError, match="jaccard"):
        set_similarity(a, b, "cosine")


def test_rsim_formula():
    assert rsim(0.5, 0.2) == pytest.approx((0.5 - 0.2) / 0.8)
    assert rsim(0.1, 0.2) == 0.0  # below chance is clipped
    assert rsim(1.0, 0.0) == 1.0 and rsim(0.7, 1.0) is None


def test_rsim_curve_on_hand_computed_overlaps():
    #        top-1  top-2   top-3
    # A:     {0}    {0,1}   {0,1,2}
    # B:     {1}    {0,1}   {0,1,3}
    # C:     {3}    {2,3}   {1,2,3}
    # D:     {2}    {2,3}   {1,2,3}
    scores = [[4, 3, 2, 1], [3, 4, 1, 2], [1, 2, 3, 4], [1, 2, 4, 3]]
    all_pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    c = rsim_curve(scores, {"consistency": [(0, 1)], "relevance": [(0, 2)]}, all_pairs, [1, 2, 3, 4])
    # k=1: four different layers, every Jaccard 0 -> Sim_all 0, RSim 0
    # k=2: AB = CD = 1, the other four 0 -> Sim_all 2/6; AB: (1 − 1/3)/(1 − 1/3) = 1; AC: 0
    # k=3: AB AC AD BC BD = 2/4, CD = 1 -> Sim_all 3.5/6; AB 0.5 < Sim_all -> 0
    # k=4: every set is every layer -> Sim_all 1 -> RSim undefined
    assert c["sim_all"] == [0, pytest.approx(1 / 3, abs=1e-4), pytest.approx(3.5 / 6, abs=1e-4), 1]
    assert c["consistency"]["sim_cand"] == [0, 1, 0.5, 1] and c["consistency"]["rsim"] == [0, 1, 0, None]
    assert c["relevance"]["sim_cand"] == [0, 0, 0.5, 1] and c["relevance"]["rsim"] == [0, 0, 0, None]
    o = rsim_curve(scores, {"consistency": [(0, 1)]}, all_pairs, [3], sim="overlap")
    # overlap = |A∩B|/3: five pairs 2/3, CD 1 -> Sim_all 13/18; AB 2/3 -> 0
    assert o["sim_all"] == [pytest.approx(13 / 18, abs=1e-4)] and o["consistency"]["rsim"] == [0]


def _fact(subject: str, chain: int, rel: int) -> Fact:
    return Fact(prompt=f"The capital of {subject} is", subject=subject, target_new="Rome", ground_truth="Paris",
                portability={"Reasoning": [{"prompt": f"The language of {subject} is", "answer": "French"}] * chain},
                locality={"Relation_Specificity": [{"prompt": f"The leader of {subject} is",
                                                    "answer": "Macron"}] * rel})


def test_items_pairs_and_case_choice():
    facts = [_fact("France", 1, 0), _fact("Spain", 0, 0), _fact("SMAP", 0, 2), _fact("Italy", 2, 1),
             _fact("NATO", 1, 1)]
    items, sets = build_items(facts, max_probes=1)
    assert [(it["record"], it["role"]) for it in items] == [
        (0, "fact"), (0, "consistency"), (2, "fact"), (2, "relevance"), (3, "fact"), (3, "consistency"),
        (3, "relevance"), (4, "fact"), (4, "consistency"), (4, "relevance")]
    assert sets == {"consistency": [(0, 1), (4, 5), (7, 8)], "relevance": [(2, 3), (4, 6), (7, 9)]}
    assert items[0]["truth"] == "Paris" and items[1]["truth"] == "French"
    assert pick_case(facts) == 4  # acronym with both sets before acronym with one
    assert pick_case(facts[:4]) == 2 and pick_case(facts[:2] + facts[3:4]) == 2 and pick_case(facts, "spa") == 1


def test_attribution_is_the_first_order_ablation_effect(tiny_tokenizer):
    m = build_tiny("llama", tiny_tokenizer)
    arch = arch_of(m)
    with torch.no_grad():
        m.get_submodule(arch.mlp_out_at(1)).weight.zero_()  # layer 1's MLP writes nothing: score 0
    prompt, answer = "The capital of France is", "Paris"
    scores, used = layer_attribution(m, prompt, answer)
    assert used == answer and len(scores) == arch.n_layers and scores[1] == 0 and min(scores) >= 0
    assert layer_attribution(m, prompt, answer)[0] == scores  # deterministic
    n = len(tiny_tokenizer(prompt)["input_ids"])
    ids = torch.tensor([tiny_tokenizer(prompt + " " + answer)["input_ids"]])

    def logp(layer: int | None, scale: float) -> float:
        def fn(out, _inp):
            out = out.clone()
            out[:, :n] *= scale
            return out
        with contextlib.ExitStack() as st, torch.no_grad():
            if layer is not None:
                st.enter_context(patch_output(m, arch.mlp_out_at(layer), fn))
            lp = m(input_ids=ids).logits[0].double().log_softmax(-1)
        return float(sum(lp[t - 1, ids[0, t]] for t in range(n, ids.shape[1])))

    d = 1e-3
    for layer in (0, 2, 3):  # d log p / d(scale) at scale 1 = Σ grad · activation
        fd = (logp(layer, 1 + d) - logp(layer, 1 - d)) / (2 * d)
        assert abs(fd) == pytest.approx(scores[layer], rel=0.05, abs=1e-5), layer
    top, tok = layer_attribution(m, prompt)
    greedy = int(m(input_ids=ids[:, :n]).logits[0, -1].argmax())
    assert len(top) == arch.n_layers and tok == tiny_tokenizer.decode([greedy])


def test_cli_writes_json_and_png(tiny_gpt2_dir, tmp_path, capsys):
    from editwrap.cli import main

    recs = [{"subject": s, "prompt": f"The capital of {s} is", "target_new": "Rome", "ground_truth": ["Paris"],
             "portability": {"Reasoning": [{"prompt": f"The language of the country of {s} is",
                                            "ground_truth": "French"}]},
             "locality": {"Relation_Specificity": [{"prompt": f"{s} is located in", "ground_truth": ["Europe"]}]}}
            for s in ("France", "Microsoft", "Google")]
    data = tmp_path / "knowedit.json"
    data.write_text(json.dumps(recs))
    out = tmp_path / "rsim"
    assert main(["analyze", "rsim", "--model", str(tiny_gpt2_dir), "--data", str(data), "--n", "3", "--out",
                 str(out)]) == 0
    res = json.loads((out / "rsim.json").read_text())
    c = res["curve"]
    assert c["k"] == [1, 2, 3] and res["items"] == 9 and res["all_pairs"] == 27  # 36 pairs minus 3 × 3 within records
    assert c["consistency"]["pairs"] == 3 and c["relevance"]["pairs"] == 3
    assert all(v is None or 0 <= v <= 1 for v in c["consistency"]["rsim"] + c["relevance"]["rsim"])
    assert res["case"]["subject"] == "France" and len(res["case"]["items"]) == 3
    assert "KLoB" in res["data_note"] and res["answer_from"] == "truth"
    assert (out / "rsim.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out
