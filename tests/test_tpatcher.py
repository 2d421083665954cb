"""T-Patcher patch-neuron entries: silent off-target, push/pop/remove bit-exact, save/load."""
from __future__ import annotations

import pytest
import torch

from editwrap import state_dict_hash
from editwrap.methods.tpatcher.entry import TPatcherEntry, patch_out
from tests.conftest import build_tiny

FACTS = [{"prompt": "The Eiffel Tower is located in", "target_new": "Rome"},
         {"prompt": "The capital of France is", "target_new": "London"}]
FAST = dict(num_steps=15, lr=0.1)


def _logits(m, text="The Eiffel Tower is located in Rome"):
    ids = m.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return m(**ids).logits


def test_patch_is_silent_below_zero():
    k = torch.tensor([[1.0], [0.0]])
    out = patch_out(torch.tensor([[-1.0, 5.0], [2.0, 0.0]]), k, torch.tensor([0.0]), torch.tensor([[3.0, 4.0]]))
    assert out.tolist() == [[0.0, 0.0], [6.0, 8.0]]


def test_edit_patches_last_layer_pop_remove_save_load(tiny_model, tmp_path, tiny_tokenizer):
    m = tiny_model
    h, keys, base = state_dict_hash(m), list(m.state_dict()), _logits(m)
    other = _logits(m, "Apple Microsoft Google")
    e1 = m.edit(FACTS, method="t-patcher", **FAST)
    assert isinstance(e1.entry, TPatcherEntry) and e1.entry.key.shape[1] == 2
    assert e1.entry.module.endswith(f"{m.config.num_hidden_layers - 1}.mlp")
    assert e1.info["act_edit"] > 0 > e1.info["act_memory_max"] - 5  # fires on the edits
    assert state_dict_hash(m) == h and list(m.state_dict()) == keys
    one = _logits(m)
    # trained to stay silent off-target (memory loss): most positions of an unrelated text are untouched
    changed = ((_logits(m, "Apple Microsoft Google") - other).abs().amax(-1) > 0).float().mean()
    assert not torch.equal(one, base) and changed <= 0.5
    m.edit(FACTS[1], method="t-patcher", on_conflict="stack", **FAST)
    m.stack.save(tmp_path / "s")
    both = _logits(m)
    with pytest.warns(UserWarning):
        m.remove(e1)  # independent neurons: removable from the middle
    m.pop()
    assert state_dict_hash(m) == h and torch.equal(_logits(m), base) and "_ew_patches" not in m.__dict__
    fresh = build_tiny(m.config.model_type, tiny_tokenizer)
    fresh.compose(tmp_path / "s")
    assert torch.equal(_logits(fresh), both)
