"""Edit sets on tiny models: per-call and per-row selection, isolation between sets, conflicts per
set, save/load of the tag, refusal for entries that cannot be gated, thread isolation."""
from __future__ import annotations

import threading

import pytest
import torch

from editwrap import Fact, state_dict_hash
from editwrap.stack import load_stack_dir, save_stack_dir

FA = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
FB = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="London")
FG = Fact(prompt="The capital of France is", subject="France", target_new="Berlin")
FAST = dict(v_num_grad_steps=3, context_templates=[(3, 1)], mom2_n_tokens=300)
TEXTS = ["The Eiffel Tower is located in the city of", "The capital of France is Paris and"]


def logits(m, texts=TEXTS, **kw):
    # left padding for this call only: the tokenizer is shared by the session's tests and threads
    enc = m.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        return m(**enc).logits


@pytest.fixture
def three_sets(tiny_model):
    """Base logits, then a global edit and one edit per tenant, with each view's logits alone."""
    m = tiny_model
    views = {"base": logits(m)}
    g = m.edit(FG, method="rome", layer=1, **FAST)
    views["global"] = logits(m)
    a = m.edit(FA, method="rome", layer=1, edit_set="a", **FAST)
    with m.using("a"):
        views["a"] = logits(m)
    b = m.edit(FB, method="memit", layers=[1, 2], edit_set="b", **FAST)
    with m.using("b"):
        views["b"] = logits(m)
    return m, views, (g, a, b)


def test_each_set_sees_only_its_edits(three_sets):
    m, views, (g, a, b) = three_sets
    assert m.edit_sets == ["a", "b"] and (a.edit_set, b.edit_set, g.edit_set) == ("a", "b", None)
    assert not torch.allclose(views["a"], views["global"]) and not torch.allclose(views["b"], views["global"])
    with m.using():
        torch.testing.assert_close(logits(m), views["global"])  # untagged edits only
    with m.using("a"):
        torch.testing.assert_close(logits(m), views["a"])  # b's edit, pushed later, is invisible
    # per batch row: the same forward pass serves three views
    with m.using_rows([["a"], ["b"], []]):
        both = logits(m, TEXTS[:1] * 3)
    for row, view in enumerate(["a", "b", "global"]):
        torch.testing.assert_close(both[row], views[view][0], rtol=1e-4, atol=1e-5)


def test_generate_with_edit_sets_per_row(three_sets):
    m, _, _ = three_sets
    prompts = [TEXTS[0]] * 3
    one_by_one = []
    for sets in (["a"], ["b"], []):
        with m.using(*sets):
            one_by_one.append(m.generate_text(TEXTS[0], max_new_tokens=4))
    assert m.generate_text(prompts, max_new_tokens=4, edit_sets=[["a"], ["b"], []]) == one_by_one


def test_unknown_set_and_bad_rows_are_clear_errors(three_sets):
    m, _, _ = three_sets
    with pytest.raises(ValueError, match="unknown edit set.*'c'.*known sets: \\['a', 'b'\\]"):
        m.using("c")
    with pytest.raises(ValueError, match="edit_sets has 1 entries for 2 prompts"):
        m.generate_text(TEXTS, edit_sets=[["a"]])
    with pytest.raises(ValueError, match="edit_set must be a non-empty string"):
        m.edit(FA, method="rome", edit_set="  ")


def test_conflicts_are_per_set_and_pop_is_exact(three_sets):
    m, views, (g, a, b) = three_sets
    # the same question in set "a" replaces a's edit only; b's different answer stays
    a2 = m.edit(FB, method="rome", layer=1, edit_set="a", **FAST)
    assert a.applied is False and b.applied and a2.info["conflicts"]["with"][0]["edit"] == a.id
    a2.pop()
    b.pop()
    g.pop()
    assert len(m.stack) == 0
    torch.testing.assert_close(logits(m), views["base"], rtol=0, atol=0)


def test_saved_stack_keeps_sets(three_sets, tmp_path):
    m, views, edits = three_sets
    save_stack_dir(m.stack.edits, tmp_path / "s", m)
    h = state_dict_hash(m)
    m.clear()
    m.compose(load_stack_dir(tmp_path / "s"))
    assert [e.edit_set for e in m.stack.edits] == [None, "a", "b"] and state_dict_hash(m) == h
    with m.using("b"):
        torch.testing.assert_close(logits(m), views["b"])


def test_activation_entries_cannot_join_a_set(tiny_llama):
    m = tiny_llama
    h = state_dict_hash(m)
    with pytest.raises(ValueError, match="grace entries .* cannot be limited to a set"):
        m.edit(FA, method="grace", edit_set="a")
    assert len(m.stack) == 0 and state_dict_hash(m) == h


def test_selection_is_per_thread(three_sets):
    m, views, _ = three_sets
    out: dict[str, torch.Tensor] = {}

    def run(name: str) -> None:
        with m.using(name):
            for _ in range(5):
                out[name] = logits(m)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(out["a"], views["a"])
    torch.testing.assert_close(out["b"], views["b"])
    torch.testing.assert_close(logits(m), logits(m))  # no selection leaks into the main thread
    assert not __import__("editwrap.sets", fromlist=["x"]).selecting()
