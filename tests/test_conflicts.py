"""Conflicting facts on the stack: replace (default), refuse, stack; exact restore on failure."""
from __future__ import annotations

import pytest
import torch

from editwrap import Fact, state_dict_hash
from editwrap.conflicts import fact_slot
from editwrap.stack import StackError

HP = {"num_steps": 3}
OLD = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
NEW = Fact(prompt="the eiffel tower  is located in the city of", subject="eiffel tower", target_new="Berlin")
OTHER = Fact(prompt="The Colosseum is located in the city of", subject="Colosseum", target_new="Paris")


def _logits(m):
    ids = m.tokenizer([OLD.prompt, OTHER.prompt], return_tensors="pt", padding=True)
    with torch.no_grad():
        return m(**ids).logits


def test_slots():
    assert fact_slot(OLD) == fact_slot(NEW)  # case and whitespace
    assert fact_slot(OLD) != fact_slot(OTHER)
    templ = Fact(prompt="The {} is located in the city of", subject="Eiffel Tower", target_new="Lyon")
    assert fact_slot(templ) == fact_slot(OLD)
    a = Fact(prompt="Where is the Eiffel Tower?", subject="Eiffel Tower", relation="P131", target_new="Lyon")
    b = Fact(prompt="The Eiffel Tower stands in", subject="eiffel tower", relation="p131", target_new="Nice")
    assert fact_slot(a) == fact_slot(b) != fact_slot(OLD)


def test_replace_is_default_and_equals_editing_the_base(tiny_llama):
    m = tiny_llama
    h0 = state_dict_hash(m)
    fresh = m.edit(NEW, method="ft-m", **HP)
    want = _logits(m)
    fresh.pop()
    m.edit(OLD, method="ft-m", **HP)
    above = m.edit(OTHER, method="ft-m", **HP)
    e = m.edit(NEW, method="ft-m", **HP)
    assert [x.facts[0].target_new for x in m.stack] == ["Paris", "Berlin"] and m.stack[0] is above
    rep = e.info["conflicts"]
    assert rep["policy"] == "replace"
    assert rep["with"][0]["target_new"] == "Rome" and rep["with"][0]["new_target"] == "Berlin"
    m.pop()
    m.pop()
    assert state_dict_hash(m) == h0
    # computed without the old edit: the same as editing the base directly
    m.edit(NEW, method="ft-m", **HP)
    assert torch.equal(_logits(m), want)
    m.clear()


def test_refuse_and_stack(tiny_llama):
    m = tiny_llama
    old = m.edit(OLD, method="ft-m", **HP)
    h, before = state_dict_hash(m), _logits(m)
    with pytest.raises(StackError, match=f"conflicts with edit {old.id}"):
        m.edit(NEW, method="ft-m", on_conflict="refuse", **HP)
    assert state_dict_hash(m) == h and torch.equal(_logits(m), before) and len(m.stack) == 1
    e = m.edit(NEW, method="ft-m", on_conflict="stack", **HP)
    assert len(m.stack) == 2 and e.info["conflicts"]["with"][0]["edit"] == old.id
    assert "conflicts" not in m.edit(OTHER, method="ft-m", on_conflict="refuse", **HP).info
    with pytest.raises(ValueError, match="on_conflict must be one of"):
        m.edit(OTHER, method="ft-m", on_conflict="overwrite", **HP)
    m.clear()


def test_failed_replace_restores_the_stack_exactly(tiny_llama, monkeypatch):
    from editwrap.methods.base import get_method

    m = tiny_llama
    m.edit(OLD, method="ft-m", **HP)
    m.edit(OTHER, method="ft-m", **HP)
    ids, h, before = [e.id for e in m.stack], state_dict_hash(m), _logits(m)
    with pytest.raises(ValueError, match="bad hyperparameters"):  # input errors: checked before anything moves
        m.edit(NEW, method="ft-m", num_steps=-1)
    seen = []

    def boom(self, model, facts, hp):
        seen.append([e.id for e in model.stack])
        raise RuntimeError("computation failed")
    monkeypatch.setattr(type(get_method("ft-m")), "compute", boom)
    with pytest.raises(RuntimeError, match="computation failed"):
        m.edit(NEW, method="ft-m", **HP)
    assert seen == [ids[1:]]  # computed with the old edit taken out ...
    assert [e.id for e in m.stack] == ids and state_dict_hash(m) == h and torch.equal(_logits(m),
                                                                                      before)  # ... put back
    monkeypatch.undo()
    m.clear()


def test_partial_entries_and_duplicate_slots(tiny_llama):
    m = tiny_llama
    batch = m.edit([OLD, OTHER], method="ft-m", **HP)
    with pytest.raises(StackError, match=f"edit {batch.id} .* holds 2 facts and only 1 conflict"):
        m.edit(NEW, method="ft-m", **HP)
    assert len(m.stack) == 1
    with pytest.raises(StackError, match="same slot"):
        m.edit([NEW, OLD], method="ft-m", **HP)
    m.clear()
