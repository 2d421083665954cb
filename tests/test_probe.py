"""evals.probe.edit_and_probe: the benchmarks' edit scoring, on a tiny model."""
from __future__ import annotations

import pytest

from editwrap import state_dict_hash
from editwrap.evals.datasets import load_dataset
from editwrap.evals.metrics import token_accuracy
from editwrap.evals.probe import edit_and_probe

from tests.conftest import KNOWEDIT_DIR

ZSRE = KNOWEDIT_DIR / "ZsRE.json"
STRONG = {"num_steps": 8, "lr": 0.05, "early_stop_loss": 0.0}  # moves the tiny model's answers


def test_edit_and_probe_scores_the_edit_and_leaves_undo_to_the_caller(tiny_llama):
    facts = list(load_dataset("zsre", ZSRE, n=2))
    tok, h0 = tiny_llama.tokenizer, state_dict_hash(tiny_llama)
    # no edit: every locality answer is unchanged
    none, secs, got = edit_and_probe(tiny_llama, tok, facts, lambda: None)
    assert none is None and secs >= 0 and got["locality"] == [1.0, 1.0]
    assert got["edit_succ"] == token_accuracy(tiny_llama, tok, [f.text_prompt for f in facts],
                                              [f.target_new for f in facts])
    assert len(got["rephrase"]) == sum(bool(f.rephrase) for f in facts)
    edit, _, got = edit_and_probe(tiny_llama, tok, facts, lambda: tiny_llama.edit(facts, method="ft-m", **STRONG))
    assert len(tiny_llama.stack) == 1 and state_dict_hash(tiny_llama) == h0  # side-car: base weights untouched
    assert got["edit_succ"] == pytest.approx(token_accuracy(tiny_llama, tok, [f.text_prompt for f in facts],
                                                            [f.target_new for f in facts]))
    edit.pop()
    assert len(tiny_llama.stack) == 0 and state_dict_hash(tiny_llama) == h0
