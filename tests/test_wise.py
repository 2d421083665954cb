"""WISE side-memory entries: routing, shards/merging, push/pop bit-exactness, save/load."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from editwrap import state_dict_hash
from editwrap.methods.wise.entry import WiseEntry, WiseMemory, WiseState, _advance, act_distance, wise_memories
from editwrap.ops.hooks import capture
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


def test_act_distance_skips_padding():
    main, side = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    d = act_distance(torch.relu, main, side, mask=mask)
    assert torch.allclose(d[0], act_distance(torch.relu, main[:1, :4], side[:1, :4])[0])
    assert torch.allclose(d[1], act_distance(torch.relu, main[1:], side[1:])[0])


def test_routing_does_not_depend_on_batch_padding(tiny_model):
    """A sequence routes to the side memory alone iff it does inside a right-padded batch."""
    m = tiny_model
    tok = m.tokenizer
    e = m.edit(FACT, method="wise", **TINY)
    mem = wise_memories(m)[e.entry.module]
    short, long = "The Eiffel Tower is located in Rome", "The capital of France is London and the Eiffel Tower is tall"
    alone, batch = tok([short], return_tensors="pt"), tok([short, long], return_tensors="pt", padding=True)
    n = alone["input_ids"].shape[1]
    assert batch["attention_mask"][0].sum() == n < batch["input_ids"].shape[1]
    mem.enabled = False
    dists = []
    for enc in (alone, batch):  # the padding-blind distance of the short row (EasyEdit's)
        with capture(m, [e.entry.module]) as cap, torch.no_grad():
            m(**enc)
        x, out = cap[e.entry.module]["input"], cap[e.entry.module]["output"]
        side = out + torch.nn.functional.linear(x, mem.state.cur)
        dists.append(float(act_distance(mem.act, out[:1], side[:1])))
    mem.enabled = True
    assert abs(dists[0] - dists[1]) > 1e-3 * dists[0]
    key, st = mem.states[-1]  # put the threshold between the two, so a padding-blind router would disagree
    mem.states[-1] = (key, replace(st, cur_acts=((dists[0] + dists[1]) / 2 / st.act_ratio,)))
    with torch.no_grad():
        a = m(**alone).logits[0]
        b = m(**batch).logits[0, :n]
    assert torch.allclose(a, b, atol=1e-5)
    mem.enabled = False
    with torch.no_grad():
        base = m(**alone).logits[0]
    mem.enabled = True
    routed_alone = not torch.allclose(a, base, atol=1e-5)
    assert routed_alone == (dists[0] > (dists[0] + dists[1]) / 2)  # the threshold really is in play
    m.pop()


def test_out_of_scope_text_never_the_scored_probe_by_default(tmp_path):
    from editwrap import Fact
    from editwrap.methods.wise.hparams import WiseHparams
    from editwrap.methods.wise.method import out_of_scope_text

    fact = Fact(prompt="Who wrote Hamlet?", target_new="Marlowe",
                locality={"Relation_Specificity": [{"prompt": "Hamlet is set in", "answer": "Denmark"}]})
    default = [out_of_scope_text([fact], WiseHparams(), t) for t in range(3)]
    assert len(set(default)) == 3 and not any("Hamlet" in t for t in default)
    assert out_of_scope_text([fact], WiseHparams(loc_corpus="fact"), 0) == "Hamlet is set in"
    mend = tmp_path / "zsre_mend_train.json"  # EasyEdit's source: the unrelated NQ question + answer
    mend.write_text('[{"src": "q1", "loc": "nq question: who sang x", "loc_ans": "Y"}, {"src": "q2", "loc": "nq b"}]')
    hp = WiseHparams(loc_corpus=str(mend))
    assert [out_of_scope_text([fact], hp, t) for t in range(3)] == ["nq question: who sang x Y", "nq b",
                                                                    "nq question: who sang x Y"]
    with pytest.raises(ValueError, match="loc_corpus"):
        WiseHparams(loc_corpus=str(tmp_path / "missing.json"))


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

