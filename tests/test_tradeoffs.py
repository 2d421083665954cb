"""benchmarks/tradeoffs.py on a tiny model: the values-only report and the edit-score-pop loop."""
from __future__ import annotations

from editwrap import Fact, state_dict_hash
from editwrap.ops.exact import exact_paths
from tests.conftest import load_benchmark

FACTS = [Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome",
              rephrase=["Where is the Eiffel Tower?"],
              locality={"Relation_Specificity": [{"prompt": "The capital of France is", "answer": "Paris"}]}),
         Fact(prompt="Apple was founded by", subject="Apple", target_new="Microsoft")]
HP = {"layers": [1], "mom2_n_tokens": 300, "v_num_grad_steps": 3, "context_templates": [[3, 1]]}


def test_values_only_reports_steps_probability_and_how_far_values_moved(tiny_llama):
    tr = load_benchmark("tradeoffs")
    adam = tr.values_only(tiny_llama, FACTS, "memit", HP)
    ngd = tr.values_only(tiny_llama, FACTS, "memit", {**HP, "v_optimizer": tr._value("ngd"), "v_lr": 0.1})
    for row in (adam, ngd):
        assert row["mean_steps"] <= 3 and 0 <= row["min_target_prob"] <= row["mean_target_prob"] <= 1
        assert row["mean_rel_delta"] > 0
    assert ngd["mean_rel_delta"] != adam["mean_rel_delta"]
    assert tr._value("2.0") == 2.0 and tr._value("[[3, 1]]") == [[3, 1]]


def test_edit_and_score_pops_back(tiny_llama):
    tr = load_benchmark("tradeoffs")
    h0 = state_dict_hash(tiny_llama)
    row = tr.edit_and_score(tiny_llama, FACTS, "memit", 2, HP)
    assert set(row) == {"cpu_s_per_fact", "edit_succ", "rephrase", "locality"} and row["cpu_s_per_fact"] > 0
    assert state_dict_hash(tiny_llama) == h0 and len(tiny_llama.stack) == 0


def test_flop_count_and_matmul_rate(tiny_llama):
    tr = load_benchmark("tradeoffs")
    row = tr.values_only(tiny_llama, FACTS, "memit", HP, flops=True)
    assert row["gflop_per_fact"] > 0 and "gflop_per_fact" not in tr.values_only(tiny_llama, FACTS, "memit", HP)
    mr = load_benchmark("matmul_rate")
    assert mr.rate(16, 16, 16, flop=1e5) > 0


def test_padding_share(tiny_llama):
    """One fact per batch pads only its short KL row: with that row apart nothing is padding."""
    tr = load_benchmark("tradeoffs")
    with exact_paths(batch_facts=1):
        one = tr.padding(tiny_llama, FACTS, "memit", 2, HP)
    with exact_paths(batch_facts=2):
        both = tr.padding(tiny_llama, FACTS, "memit", 2, HP)
    assert one["padding_pct_kl_apart"] == 0.0 and one["padding_pct"] > 0
    assert both["padding_pct"] >= both["padding_pct_kl_apart"] >= 0 and both["tail_positions"] == one["tail_positions"]
