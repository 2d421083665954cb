"""Stack consolidation and retraction (tiny random models)."""
from __future__ import annotations

import pytest
import torch

from editwrap import Fact, StackError, state_dict_hash
from editwrap.methods.base import get_method

F1 = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
F2 = Fact(prompt="The capital of France is", subject="France", target_new="London")
F3 = Fact(prompt="Apple was founded by", subject="Apple", target_new="Microsoft")
FAST = dict(mom2_n_tokens=300, v_num_grad_steps=4, context_templates=[(3, 2)], layers=[1, 2])


def logits(m, text="The capital of France is Paris and the tower"):
    with torch.no_grad():
        return m(**m.tokenizer(text, return_tensors="pt")).logits


def _direct(m, method, facts, zs, hp_from):
    """The joint solve computed by hand on the model as it is."""
    meth = get_method(method)
    hp = m.resolve_hparams(meth, **{k: v for k, v in hp_from.items() if k in meth.Hparams.model_fields})
    return meth.resolve(m, facts, zs, hp)


def _assert_parts_close(a, b):
    assert a.entry.parts.keys() == b.entry.parts.keys()
    for mod in a.entry.parts:
        da = a.entry.parts[mod]["U"] @ a.entry.parts[mod]["V"].T
        db = b.entry.parts[mod]["U"] @ b.entry.parts[mod]["V"].T
        torch.testing.assert_close(da, db, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_consolidation_equals_direct_joint_solve_and_pops_exact(tiny_model, method):
    m = tiny_model
    h0, l0 = state_dict_hash(m), logits(m)
    e1 = m.edit([F1, F2], method=method, **FAST)
    e2 = m.edit([F3], method=method, **FAST)
    zs = torch.cat([e1.entry.aux["z"], e2.entry.aux["z"]])
    c = m.stack.consolidate()
    assert len(m.stack) == 1 and m.stack[0] is c and c.method == method
    assert [f.prompt for f in c.facts] == [F1.prompt, F2.prompt, F3.prompt]
    assert c.info["consolidated"] == [e1.id, e2.id]
    torch.testing.assert_close(c.entry.aux["z"], zs)
    consolidated = logits(m)
    c.pop()
    assert state_dict_hash(m) == h0 and torch.equal(logits(m), l0), "pop of the consolidated entry is bit-exact"
    d = _direct(m, method, [F1, F2, F3], zs, e1.hparams)
    _assert_parts_close(c, d)
    m.push(d)
    torch.testing.assert_close(logits(m), consolidated, rtol=1e-4, atol=1e-5)
    d.pop()


def test_retract_from_consolidated_equals_fresh_consolidation_of_the_rest(tiny_llama):
    m = tiny_llama
    h0 = state_dict_hash(m)
    e1 = m.edit([F1, F2], method="memit", **FAST)
    e2 = m.edit([F3], method="memit", **FAST)
    z = {f.prompt: zz for e in (e1, e2) for f, zz in zip(e.facts, e.entry.aux["z"])}
    m.stack.consolidate()
    r = m.stack.retract(F2)
    assert r is not None and [f.prompt for f in r.facts] == [F1.prompt, F3.prompt] and len(m.stack) == 1
    r.pop()
    fresh = _direct(m, "memit", [F1, F3], torch.stack([z[F1.prompt], z[F3.prompt]]), e1.hparams)
    _assert_parts_close(r, fresh)
    assert state_dict_hash(m) == h0


def test_retract_single_fact_entry_removes_it_and_errors_are_clear(tiny_llama):
    m = tiny_llama
    l0 = logits(m)
    e1 = m.edit([F1], method="memit", **FAST)
    e2 = m.edit(F2, method="rome", mom2_n_tokens=300, v_num_grad_steps=3, context_templates=[(3, 2)])
    assert m.stack.retract(F1.prompt) is None
    assert [e.id for e in m.stack] == [e2.id] and not e1.applied
    with pytest.raises(StackError, match="no edit on the stack holds"):
        m.stack.retract(F3)
    with pytest.raises(StackError, match="cannot be consolidated"):
        m.stack.consolidate([e2])
    assert [e.id for e in m.stack] == [e2.id], "a refused consolidation leaves the stack as it was"
    e2.pop()
    assert torch.equal(logits(m), l0)


def test_failed_consolidation_restores_the_stack(tiny_llama, monkeypatch):
    m = tiny_llama
    e1 = m.edit([F1], method="memit", **FAST)
    e2 = m.edit([F2], method="memit", **FAST)
    edited = logits(m)
    from editwrap.methods.memit.method import Memit

    def boom(*a, **k):
        raise RuntimeError("solver failed")

    monkeypatch.setattr(Memit, "resolve", boom)
    with pytest.raises(RuntimeError, match="solver failed"):
        m.stack.consolidate()
    assert [e.id for e in m.stack] == [e1.id, e2.id] and torch.equal(logits(m), edited)
    m.clear()

