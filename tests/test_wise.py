"""WISE side-memory entries: routing, shards/merging, push/pop bit-exactness, save/load."""
from __future__ import annotations

import pytest
import torch

from editwrap import state_dict_hash
from editwrap.entries.wise import WiseEntry, WiseMemory, WiseState, _advance
from editwrap.ops.merge import ties_merge
from editwrap.stack import StackError
from tests.conftest import build_tiny

FACT = {"prompt": "The Eiffel Tower is located in", "target_new": "Rome"}
FACT2 = {"prompt": "The capital of France is", "target_new": "London"}
TINY = dict(n_iter=5, alpha=0.05, beta=0.5, gamma=0.2)  # tiny random models have tiny activations


def _logits(m, text="The Eiffel Tower is located in Rome"):
    ids = m.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return m(**ids).logits


def _entry(total, val, act=1.0, save=2, merge=4, mask=True):
    return WiseEntry("m", total, torch.full((2, 3), float(val)), torch.ones(2, 3, dtype=torch.bool) if mask else None,
                     act, "relu", 0.5, save, merge, 1.0)


def test_ties_merge_sign_election_and_disjoint_mean():
    a = torch.tensor([1.0, -2.0, 0.0])
    b = torch.tensor([3.0, 1.0, 0.0])
    out = ties_merge([a, b], [0.5, 0.5], density=1.0)
    assert out.tolist() == [2.0, -2.0, 0.0]


def test_shards_close_and_merge():
    s = WiseState()
    s = _advance(s, _entry(0, 1, act=3.0))
    assert s.cur is not None and not s.shards
    s = _advance(s, _entry(1, 1, act=2.0, mask=False))  # closes the shard (save_freq 2)
    assert s.cur is None and len(s.shards) == 1 and s.shards[0][1] == 2.0 and s.shards[0][0][0, 0] == 2.0
    s = _advance(_advance(s, _entry(2, 4, act=5.0)), _entry(3, 4, act=6.0, mask=False))  # 4th edit: merge
    assert len(s.shards) == 1 and s.shards[0][1] == 2.0 and s.total == 4


def test_router_picks_shifted_memory_only_above_threshold():
    mem = WiseMemory(torch.nn.Identity(), "relu")
    big = torch.zeros(2, 2)
    big[0, 0] = 10.0
    mem.states.append(("k", WiseState(cur=big, cur_acts=(4.0,), total=1, act_ratio=0.5)))
    out = torch.ones(2, 3, 2)
    x = torch.zeros(2, 3, 2)
    x[0, :, 0] = 1.0  # first sequence lights up the memory (distance 10 > 2), second does not
    routed = mem.route(out, x)
    assert torch.equal(routed[1], out[1]) and torch.equal(routed[0, :, 0], torch.full((3,), 11.0))


def test_push_pop_exact_order_and_save_load(tiny_model, tmp_path, tiny_tokenizer):
    m = tiny_model
    h, keys, base = state_dict_hash(m), list(m.state_dict()), _logits(m)
    e1 = m.edit(FACT, method="wise", **TINY)
    assert isinstance(e1.entry, WiseEntry) and e1.entry.mask is not None
    assert state_dict_hash(m) == h and list(m.state_dict()) == keys
    one = _logits(m)
    e2 = m.edit(FACT2, method="wise", **TINY)
    assert e2.entry.mask is None and e2.entry.base_total == 1  # same shard, same mask
    two = _logits(m)
    with pytest.raises(StackError, match="cannot be removed from the middle"):
        m.remove(e1)
    m.stack.save(tmp_path / "s")
    m.pop()
    assert torch.equal(_logits(m), one)
    m.pop()
    with pytest.raises(ValueError, match="order"):
        m.push(e2)  # computed on a side memory holding one edit
    assert state_dict_hash(m) == h and torch.equal(_logits(m), base) and "_ew_wise" not in m.__dict__
    fresh = build_tiny(m.config.model_type, tiny_tokenizer)
    fresh.compose(tmp_path / "s")
    assert torch.equal(_logits(fresh), two)


@pytest.mark.slow
def test_embedded_wise_edit_and_pop(embedded):
    m = embedded
    fact = {"prompt": "Which family does Epaspidoceras belong to?", "target_new": "Noctuidae"}
    other = "The capital of Japan is"
    h = state_dict_hash(m)
    base, base_other = (m.generate_text(p, max_new_tokens=5) for p in (fact["prompt"], other))
    m.edit(fact, method="wise")
    try:
        assert "Noct" in m.generate_text(fact["prompt"], max_new_tokens=5)
        assert m.generate_text(other, max_new_tokens=5) == base_other  # routed to the main memory
    finally:
        m.pop()
    assert state_dict_hash(m) == h and m.generate_text(fact["prompt"], max_new_tokens=5) == base
