"""GRACE codebook entries: placement logic, push/pop bit-exactness, order dependence, save/load."""
from __future__ import annotations

import pytest
import torch

from editwrap import state_dict_hash
from editwrap.methods.grace.entry import Codebook, GraceEntry
from editwrap.methods.grace.hparams import GraceHparams
from editwrap.methods.grace.method import _place
from editwrap.ops.tokens import target_ids
from editwrap.stack import StackError

FACT = {"prompt": "The Eiffel Tower is located in", "target_new": "Rome"}
FACT_OTHER = {"prompt": "The Eiffel Tower is located in", "target_new": "Berlin"}
FACT2 = {"prompt": "The capital of France is", "target_new": "London"}


def _logits(m, text="The Eiffel Tower is located in Rome"):
    ids = m.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return m(**ids).logits


def test_place_grow_split_expand():
    hp = GraceHparams(eps=1.0)
    book = Codebook(None)
    assert _place(book, torch.zeros(3), "a", hp, 2) == 0 and len(book) == 1
    assert _place(book, torch.tensor([5.0, 0, 0]), "b", hp, 2) == 1  # far: new row
    # same label, just outside radius 1 but within eps + radius: widen row 0 ("coverage")
    assert _place(book, torch.tensor([1.5, 0, 0]), "a", hp, 2) == 0 and len(book) == 2
    assert float(book.eps[0]) == pytest.approx(1.5)
    # different label inside row 0's reach: new row, both radii split at the midpoint
    assert _place(book, torch.tensor([0, 1.0, 0]), "c", hp, 2) == 2
    assert float(book.eps[0]) == pytest.approx(0.5 - 1e-5) and float(book.eps[2]) == pytest.approx(0.5)


def test_codebook_apply_replaces_only_within_radius():
    book = Codebook(None)
    book.keys, book.values = torch.eye(2), torch.tensor([[7.0], [9.0]])
    book.eps, book.labels = torch.tensor([0.1, 0.1]), ["a", "b"]
    inp = torch.tensor([[[1.0, 0.0], [0.0, 1.05], [0.5, 0.5]]])
    out = book.apply(torch.zeros(1, 3, 1), inp)
    assert out.flatten().tolist() == [7.0, 9.0, 0.0]


def test_edit_learns_and_pop_is_exact(tiny_model):
    m = tiny_model
    h, keys, base = state_dict_hash(m), list(m.state_dict()), _logits(m)
    e = m.edit(FACT, method="grace", n_iter=30, eps=1e-3)  # tiny random models have tiny activations
    assert isinstance(e.entry, GraceEntry)
    # a tiny random model cannot be confident, but the first target token becomes the top-1 prediction
    first = target_ids(m.tokenizer, FACT["target_new"])[0]
    edited = _logits(m, FACT["prompt"])[0]
    assert int(edited[-1].argmax()) == first != int(base[0, len(edited) - 1].argmax())
    assert state_dict_hash(m) == h and list(m.state_dict()) == keys
    # unrelated prompt far from the key: unchanged
    other = "Apple Microsoft Google"
    m.pop()
    ref = _logits(m, other)
    m.push(e)
    assert torch.equal(_logits(m, other), ref)
    m.pop()
    assert state_dict_hash(m) == h and torch.equal(_logits(m), base) and "_ew_codebooks" not in m.__dict__


def test_sequential_split_order_dependence_and_save_load(tiny_llama, tmp_path, tiny_tokenizer):
    from tests.conftest import build_tiny

    m = tiny_llama
    base = _logits(m)
    e1 = m.edit(FACT, method="grace", n_iter=20, eps=1e-3)
    l1 = _logits(m)
    e2 = m.edit(FACT_OTHER, method="grace", n_iter=20, eps=1e-3, on_conflict="stack")  # same key, other answer: split
    assert len(e2.entry.upd_labels) == 1 and e2.entry.base_rows == 1
    e3 = m.edit(FACT2, method="grace", n_iter=20, eps=1e-3)
    assert e3.depends_on == [e1.id, e2.id]
    l3 = _logits(m)
    with pytest.raises(StackError, match="cannot be removed from the middle"):
        m.remove(e2)
    m.stack.save(tmp_path / "s")
    m.pop()
    m.pop()
    assert torch.equal(_logits(m), l1)  # split radius restored bit for bit
    m.pop()
    assert torch.equal(_logits(m), base)
    fresh = build_tiny("llama", tiny_tokenizer)
    fresh.compose(tmp_path / "s")
    assert torch.equal(_logits(fresh), l3)
    with pytest.raises(ValueError, match="order"):
        m.push(e3)  # computed on a 2-row codebook
    assert not m.stack.edits


@pytest.mark.slow
def test_embedded_grace_edit_and_pop(embedded):
    m = embedded
    fact = {"prompt": "Which family does Epaspidoceras belong to?", "target_new": "Noctuidae"}
    h = state_dict_hash(m)
    base = m.generate_text(fact["prompt"], max_new_tokens=5)
    m.edit(fact, method="grace")
    try:
        assert "Noct" in m.generate_text(fact["prompt"], max_new_tokens=5)
    finally:
        m.pop()
    assert state_dict_hash(m) == h and m.generate_text(fact["prompt"], max_new_tokens=5) == base
