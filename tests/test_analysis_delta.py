"""ΔW statistics (editwrap.analysis.delta) on synthetic low-rank deltas with hand-computed answers."""
from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from torch import nn

from editwrap import Edit, EditableModel, Fact
from editwrap.analysis.delta import (delta_report, effective_rank, numerical_rank, part_inner, singular_values,
                                     stack_localities)
from editwrap.entries.delta import DeltaEntry


E = torch.eye(4)  # e_i in the 4-dim output space; e_i[:3] in the 3-dim input space


def e(i: int, n: int = 4) -> torch.Tensor:
    return E[:n, i:i + 1]


def edit(parts: dict, prompt: str = "p") -> Edit:
    return Edit("synthetic", [Fact(prompt=prompt, target_new="x")], {}, DeltaEntry(parts))


# A = 2 e1 e1ᵀ on layer 1; B = 3 e1 e1ᵀ + 4 e2 e2ᵀ on layer 1 and 12 e3 e3ᵀ (dense) on layer 0;
# C = e2 e2ᵀ (dense) on layer 1
A = edit({"layers.1": {"U": 2 * e(0), "V": e(0, 3)}}, "a")
B = edit({"layers.1": {"U": torch.cat([3 * e(0), 4 * e(1)], 1), "V": torch.cat([e(0, 3), e(1, 3)], 1)},
          "layers.0": {"D": 12 * e(2) @ e(2, 3).T}}, "b")
C = edit({"layers.1": {"D": e(1) @ e(1, 3).T}}, "c")


def host() -> nn.Module:
    """Base weights: 4×3 linear layers of 0.5 everywhere, so ‖W‖_F = √3."""
    h = nn.ModuleDict({"layers": nn.ModuleList([nn.Linear(3, 4), nn.Linear(3, 4)])})
    for lin in h["layers"]:
        nn.init.constant_(lin.weight, 0.5)
    return h


def test_statistics_match_hand_computed_values():
    rep = delta_report([A, B, C], host(), localities=[{"locality": 0.9}, {"locality": 0.5}, {"locality": 1.0}])
    a, b, c = rep["edits"]
    assert a["fro"] == 2 and b["fro"] == 13 and c["fro"] == 1  # √(3² + 4² + 12²) = 13
    assert a["rel_norm"] == pytest.approx(2 / math.sqrt(3), abs=1e-6)
    assert b["rel_norm"] == pytest.approx(13 / math.sqrt(6), abs=1e-6)  # over both touched weights
    assert a["layers"] == [1] and b["layers"] == [0, 1] and c["layers"] == [1]
    b1, b0 = b["modules"]["layers.1"], b["modules"]["layers.0"]
    assert b1["top_singular_values"] == [4, 3] and b1["rank"] == 2 and b1["factor_rank"] == 2 and b1["fro"] == 5
    h = -(4 / 7 * math.log(4 / 7) + 3 / 7 * math.log(3 / 7))
    assert b1["effective_rank"] == pytest.approx(math.exp(h), abs=1e-4)
    assert b0["rank"] == 1 and b0["effective_rank"] == 1 and b0["factor_rank"] is None and b0["shape"] == [4, 3]
    assert a["modules"]["layers.1"]["effective_rank"] == 1
    ov = rep["overlap"]
    # layer 1: <A,B> = 2·3 = 6 -> 6/(2·5); <B,C> = 4 -> 4/(5·1); A ⟂ C
    assert ov["modules"]["layers.1"] == [[1, 0.6, 0], [0.6, 1, 0.8], [0, 0.8, 1]]
    assert ov["modules"]["layers.0"] == [[None] * 3, [None, 1, None], [None] * 3]
    assert ov["all"][0][1] == pytest.approx(6 / 26, abs=1e-4) and ov["all"][1][2] == pytest.approx(4 / 13, abs=1e-4)
    s = rep["summary"]["synthetic"]
    rel = [2 / math.sqrt(3), 13 / math.sqrt(6), 1 / math.sqrt(3)]
    assert s["pearson_rel_norm_locality"] == pytest.approx(statistics.correlation(rel, [0.9, 0.5, 1.0]), abs=1e-4)
    assert s["mean_rank"] == pytest.approx((1 + 2 + 1 + 1) / 4) and s["layers"] == [0, 1]
    json.dumps(rep)  # JSON-ready


def test_spectrum_helpers():
    g = torch.Generator().manual_seed(0)
    U, V = torch.randn(6, 3, generator=g), torch.randn(5, 3, generator=g)
    full = torch.linalg.svdvals(U.double() @ V.double().T)  # 5 values, the last two zero
    assert torch.allclose(singular_values({"U": U, "V": V}), full[:3], atol=1e-10) and full[3:].abs().max() < 1e-10
    D = torch.randn(6, 5, generator=g)
    assert part_inner({"U": U, "V": V}, {"D": D}) == pytest.approx(float(((U @ V.T) * D).sum()), rel=1e-5)
    assert part_inner({"U": U, "V": V}, {"U": U, "V": V}) == pytest.approx(float((U @ V.T).square().sum()), rel=1e-5)
    flat = singular_values({"U": 2 * torch.eye(4)[:, :3], "V": torch.eye(3)})
    assert flat.tolist() == [2, 2, 2] and effective_rank(flat) == pytest.approx(3) and numerical_rank(flat, (4, 3)) == 3
    tiny = singular_values({"U": torch.cat([e(0), 1e-9 * e(1)], 1), "V": torch.cat([e(0, 3), e(1, 3)], 1)})
    assert numerical_rank(tiny, (4, 3)) == 1  # 1e-9 < 1 · 4 · ε_float32
    assert numerical_rank(torch.zeros(2, dtype=torch.float64), (4, 3)) == 0 and effective_rank(torch.zeros(2)) == 0


def test_non_delta_entries_are_skipped():
    from editwrap.entries.base import Entry

    class Other(Entry):
        kind = "other-kind"

    rep = delta_report([A, Edit("x", [], {}, Other())])
    assert len(rep["edits"]) == 1 and rep["skipped"][0]["kind"] == "other-kind" and rep["edits"][0]["rel_norm"] is None


FAST = {"rome": dict(mom2_n_tokens=300, v_num_grad_steps=3, context_templates=[(3, 2)]), "ft-l": dict(num_steps=3)}
FACTS = [Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome"),
         Fact(prompt="The capital of France is", subject="France", target_new="London")]


def test_cli_on_a_saved_stack_with_its_results(tiny_llama_dir, tmp_path):
    from editwrap.cli import main

    m = EditableModel.from_pretrained(tiny_llama_dir)
    m.edit(FACTS[0], method="rome", **FAST["rome"])
    m.edit(FACTS[1], method="ft-l", **FAST["ft-l"])
    stack = m.stack.save(tmp_path / "tiny-run.stack")
    lines = [{"index": i, "prompt": f.prompt, "checkpoint": 2,
              "post": {"locality": {"R": [loc, 1.0]}, "rewrite_acc": [1.0]}}
             for i, (f, loc) in enumerate(zip(FACTS, [0.5, 0.0]))]
    lines.append({"index": 0, "prompt": FACTS[0].prompt, "checkpoint": 1, "post": {"locality": {"R": [0.0]}}})
    (tmp_path / "tiny-run.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{torn")
    assert stack_localities(stack, m.stack.edits)[0] == [{"locality": 0.75, "rewrite_acc": 1.0},
                                                        {"locality": 0.5, "rewrite_acc": 1.0}]
    out = tmp_path / "out"
    assert main(["analyze", "delta", str(stack), "--model", str(tiny_llama_dir), "--out", str(out)]) == 0
    rep = json.loads((out / "delta.json").read_text())
    rome, ft = rep["edits"]
    assert rome["method"] == "rome" and rome["label"] == "tiny-run" and rome["locality"] == 0.75
    mod = next(iter(rome["modules"].values()))
    assert mod["rank"] == 1 and mod["factor_rank"] == 1 and mod["effective_rank"] == 1 and rome["rel_norm"] > 0
    assert ft["method"] == "ft-l" and all(v["factor_rank"] is None for v in ft["modules"].values())
    assert "checkpoint 2" in rep["locality_source"]["tiny-run"]
    assert (out / "delta.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_facts_mode_edits_scores_and_pops(tiny_llama_dir, tmp_path):
    from editwrap.cli import main

    facts = tmp_path / "facts.jsonl"
    probe = {"prompt": "Apple and Google", "answer": "Paris"}
    rows = [dict(f.model_dump(exclude_defaults=True), locality={"R": [probe]}) for f in FACTS]
    facts.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    args = ["analyze", "delta", "--model", str(tiny_llama_dir), "--facts", str(facts), "--method", "rome", "--n", "2",
            "--out", str(out)] + [x for k, v in FAST["rome"].items() for x in ("--hparam", f"{k}={json.dumps(v)}")]
    assert main(args) == 0
    rep = json.loads((out / "delta.json").read_text())
    assert [r["prompt"] for r in rep["edits"]] == [f.prompt for f in FACTS]
    assert all(r["locality"] is not None and 0 <= r["locality"] <= 1 for r in rep["edits"])
    assert len(rep["overlap"]["all"]) == 2 and rep["overlap"]["all"][0][0] == 1
