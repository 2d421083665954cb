"""Stacks saved by earlier releases load with this one and act as they did when saved.

Each folder under ``tests/data/stacks/`` holds a tiny base model, a stack saved on it (one entry of
every kind that needs no trained artifact) and what the stacked model computed at save time
(``make_stacks.py`` there writes them with the public API only).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editwrap import EditableModel
from editwrap.ops.exact import RETIRED_HPARAMS, exact_paths
from editwrap.ops.fingerprint import state_dict_hash

STACKS = Path(__file__).resolve().parent / "data" / "stacks"
VERSIONS = sorted(p.name for p in STACKS.iterdir() if (p / "stack" / "edits.json").is_file())


def test_fixtures_exist():
    assert "v0.2" in VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_saved_stack_loads_and_acts_as_saved(version):
    root = STACKS / version
    expected = load_file(str(root / "expected.safetensors"))
    meta = json.loads((root / "expected.json").read_text(encoding="utf-8"))
    model = EditableModel.from_pretrained(str(root / "base"))
    h0 = state_dict_hash(model)
    enc = model.tokenizer(meta["probes"], return_tensors="pt", padding=True)
    assert torch.equal(enc["attention_mask"], expected["attention_mask"])
    with torch.no_grad():
        before = model(**enc).logits
    ll_before = [model.loglikelihood(c, w) for c, w, _ in meta["loglikelihood"]]

    model.compose(root / "stack")
    assert [e.method for e in model.stack] == meta["methods"]
    saved = json.loads((root / "stack" / "edits.json").read_text(encoding="utf-8"))["edits"]
    if version == "v0.2":  # 0.2 saved the switches of exact speed-ups with every edit; they are dropped
        assert RETIRED_HPARAMS <= {k for rec in saved for k in rec["hparams"]}
    assert not any(RETIRED_HPARAMS & set(e.hparams) for e in model.stack)
    with torch.no_grad():
        after = model(**enc).logits
    assert not torch.allclose(after, before, atol=1e-3), "the stack changes nothing: the check could not fail"
    torch.testing.assert_close(after, expected["logits"], atol=1e-4, rtol=1e-4)
    ll_after = [model.loglikelihood(c, w) for c, w, _ in meta["loglikelihood"]]
    assert ll_after != ll_before
    assert ll_after == pytest.approx([v for _, _, v in meta["loglikelihood"]], abs=1e-3)

    model.clear()
    assert state_dict_hash(model) == h0
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, before)


def test_exact_paths_is_a_checked_private_setting():
    with exact_paths(batch_facts=2, fast_path=False) as p:
        assert (p.batch_facts, p.fast_path, p.prefix_cache) == (2, False, True)
    with pytest.raises(TypeError):
        with exact_paths(no_such_switch=True):
            pass
    with pytest.raises(ValueError, match="batch_facts"):
        with exact_paths(batch_facts=0):
            pass
