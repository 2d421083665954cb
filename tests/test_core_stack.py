"""Fast logic tests of EditableModel and the edit stack on tiny random Llama and GPT-2 models."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, PreTrainedModel

from editwrap import Edit, EditableModel, Fact, FactError, StackError, state_dict_hash
from editwrap.entries.delta import DeltaEntry
from editwrap.ops.exact import exact_paths
from editwrap.arch import arch_of

from .conftest import build_tiny

FACT = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
FAST = {
    "rome": dict(mom2_n_tokens=300, v_num_grad_steps=3, context_templates=[(3, 2)]),
    "memit": dict(mom2_n_tokens=300, v_num_grad_steps=3, context_templates=[(3, 2)]),
    "ft-l": dict(num_steps=3),
    "ft-m": dict(num_steps=3),
}


def logits(m, text="The capital of France is Paris and the tower"):
    ids = m.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return m(**ids).logits


def random_delta(m, seed: int, dense: bool = False) -> Edit:
    """An edit with a random side-car on one MLP projection (no method compute: fast)."""
    g = torch.Generator().manual_seed(seed)
    arch = arch_of(m)
    name = arch.mlp_out_at(seed % arch.n_layers)
    mod = m.get_submodule(name)
    w = mod.weight
    out_f, in_f = (w.shape[1], w.shape[0]) if type(mod).__name__ == "Conv1D" else tuple(w.shape)
    part = ({"D": torch.randn(out_f, in_f, generator=g) * 0.05} if dense else
            {"U": torch.randn(out_f, 2, generator=g) * 0.2, "V": torch.randn(in_f, 2, generator=g) * 0.2})
    return Edit("random", [FACT], {}, DeltaEntry({name: part}))


def test_wrap_is_the_model(tiny_model):
    m = tiny_model
    assert isinstance(m, EditableModel) and isinstance(m, PreTrainedModel)
    assert type(m).__name__ in ("LlamaForCausalLM", "GPT2LMHeadModel")
    assert m.config.vocab_size == len(m.tokenizer)
    out = m.generate(**m.tokenizer("Hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] >= 2
    assert EditableModel.wrap(m) is m


@pytest.mark.parametrize("method", ["rome", "memit", "ft-l", "ft-m"])
def test_each_method_edits_and_pops_bit_exact(tiny_model, method):
    m = tiny_model
    h0, l0 = state_dict_hash(m), logits(m)
    edit = m.edit(FACT, method=method, **FAST[method])
    assert len(m.stack) == 1 and edit.applied and edit.method == method
    assert not torch.equal(logits(m), l0), "the edit should change the outputs"
    assert state_dict_hash(m) == h0, "side-cars never write the base weights"
    edit.pop()
    assert state_dict_hash(m) == h0 and torch.equal(logits(m), l0)
    assert not any(mod._forward_hooks for mod in m.modules()), "pop leaves no hook behind"


def test_context_manager_and_memit_batch(tiny_llama):
    m = tiny_llama
    l0 = logits(m)
    f2 = Fact(prompt="The capital of France is", subject="France", target_new="London")
    with m.edit([FACT, f2], method="memit", **FAST["memit"]) as e:
        assert len(e.facts) == 2 and len(m.stack) == 1
        V = e.entry.parts[next(iter(e.entry.parts))]["V"]
        assert V.shape[1] == 2, "MEMIT keeps one rank per fact"
    assert len(m.stack) == 0 and torch.equal(logits(m), l0)


def test_stack_order_remove_and_repr(tiny_model):
    m = tiny_model
    l0 = logits(m)
    e1, e2, e3 = (m.push(random_delta(m, i)) for i in range(3))
    assert [e.id for e in m.stack] == [e1.id, e2.id, e3.id]
    assert e3.depends_on == [e1.id, e2.id]
    assert "3 entries" in repr(m.stack) and e2.id in repr(m.stack)
    with pytest.warns(UserWarning, match="computed with it present"):
        m.remove(e2)
    assert [e.id for e in m.stack] == [e1.id, e3.id]
    e1.pop()
    m.pop()
    assert torch.equal(logits(m), l0)
    with pytest.raises(StackError, match="empty"):
        m.pop()
    with pytest.raises(StackError, match="not on any"):
        e1.pop()


def test_merge_unmerge_bit_exact_and_equivalent(tiny_model):
    m = tiny_model
    h0 = state_dict_hash(m)
    m.push(random_delta(m, 1))
    m.push(random_delta(m, 2, dense=True))
    side = logits(m)
    m.merge()
    assert m.is_merged and state_dict_hash(m) != h0
    torch.testing.assert_close(logits(m), side, rtol=1e-4, atol=1e-4)
    with pytest.raises(StackError, match="unmerge"):
        m.push(random_delta(m, 3))
    m.unmerge()
    assert state_dict_hash(m) == h0 and torch.equal(logits(m), side)
    m.clear()
    assert state_dict_hash(m) == h0


def test_save_load_stack_roundtrip(tiny_model, tmp_path, tiny_tokenizer):
    m = tiny_model
    e = m.edit(FACT, method="ft-m", **FAST["ft-m"])
    m.push(random_delta(m, 5))
    edited = logits(m)
    m.stack.save(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "edits.json").read_text())
    assert [r["method"] for r in manifest["edits"]] == ["ft-m", "random"]
    assert manifest["edits"][0]["facts"][0]["target_new"] == "Rome"
    m.stack.save(tmp_path / "s")  # overwriting is atomic and allowed
    m.clear()
    m.compose(tmp_path / "s")
    assert torch.equal(logits(m), edited)
    assert m.stack[0].id == e.id
    m.clear()
    other = build_tiny("llama" if arch_of(m).family == "gpt2" else "gpt2", tiny_tokenizer)
    with pytest.raises(StackError, match="fingerprint"):
        other.compose(tmp_path / "s")
    assert len(other.stack) == 0
    with pytest.raises(StackError, match="edits.json"):
        m.compose(tmp_path)


def test_from_pretrained_path_and_save_pretrained_merged(tiny_model, tmp_path):
    m = tiny_model
    base_dir = tmp_path / "base"
    m.save_pretrained(base_dir)
    m.tokenizer.save_pretrained(base_dir)
    loaded = EditableModel.from_pretrained(base_dir)
    assert torch.equal(logits(loaded), logits(m))
    loaded.push(random_delta(loaded, 7))
    edited = logits(loaded)
    h = state_dict_hash(loaded)
    loaded.stack.save(tmp_path / "stack")
    loaded.save_pretrained(tmp_path / "merged")
    assert state_dict_hash(loaded) == h and not loaded.is_merged, "save_pretrained leaves the live model as it was"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert type(plain).__name__ == type(m).__name__
    with torch.no_grad():
        torch.testing.assert_close(plain(**m.tokenizer("The capital of France is Paris and the tower",
                                                        return_tensors="pt")).logits, edited, rtol=1e-4, atol=1e-4)
    again = EditableModel.from_pretrained(base_dir, stack=tmp_path / "stack")
    assert torch.equal(logits(again), edited)


def test_bad_inputs_leave_model_untouched(tiny_llama):
    m = tiny_llama
    h0 = state_dict_hash(m)
    with pytest.raises(ValueError, match="prompt"):
        Fact(prompt="  ", target_new="x")
    with pytest.raises(ValueError, match="target_new"):
        Fact(prompt="a", target_new="")
    with pytest.raises(ValueError):
        Fact(prompt=3, target_new="x")
    with pytest.raises(FactError, match="subject is missing.*rome"):
        m.edit(Fact(prompt="The tower is in", target_new="Rome"), method="rome")
    with pytest.raises(FactError, match="does not occur in the prompt"):
        m.edit(Fact(prompt="The tower is in", subject="Eiffel", target_new="Rome"), method="rome")
    with pytest.raises(FactError, match="tokens"):
        m.edit(Fact(prompt="word " * 400, target_new="x"), method="ft-m")
    with pytest.raises(FactError, match="not a Fact"):
        m.edit(["just a string"], method="ft-m")
    with pytest.raises(ValueError, match="unknown editing method"):
        m.edit(FACT, method="nope")
    with pytest.raises(ValueError, match="num_stepz"):
        m.edit(FACT, method="ft-m", num_stepz=3)
    with pytest.raises(ValueError, match="layers"):
        m.edit(FACT, method="memit", layers=[99])
    with pytest.raises(ValueError, match="one fact at a time"):
        m.edit([FACT, Fact(prompt="The Colosseum is in", subject="Colosseum", target_new="Paris")], method="rome")
    with pytest.raises(StackError, match="same slot"):
        m.edit([FACT, FACT], method="ft-m")
    assert state_dict_hash(m) == h0 and len(m.stack) == 0
    assert not any(mod._forward_hooks for mod in m.modules())


def test_transactional_on_nonfinite_and_exceptions(tiny_llama, monkeypatch):
    m = tiny_llama
    h0, l0 = state_dict_hash(m), logits(m)
    bad = random_delta(m, 1)
    next(iter(bad.entry.parts.values()))["U"][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        m.push(bad)
    from editwrap.ops import train

    calls = []

    def failing_second_call(real):  # the second step fails (on the fast path: while blocks are replayed)
        def run(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("simulated failure mid-compute")
            return real(*a, **k)
        return run

    monkeypatch.setattr(train, "edit_loss_at_targets", failing_second_call(train.edit_loss_at_targets))
    monkeypatch.setattr(train, "edit_loss", failing_second_call(train.edit_loss))
    for fast in (True, False):
        calls.clear()
        with exact_paths(fast_path=fast), pytest.raises(RuntimeError, match="simulated"):
            m.edit(FACT, method="ft-m", num_steps=3, early_stop_loss=0.0)
    assert len(m.stack) == 0 and state_dict_hash(m) == h0 and torch.equal(logits(m), l0)
    assert not any(mod._forward_hooks for mod in m.modules())
    assert not any("forward" in mod.__dict__ for mod in m.modules()), "no replayed forward left behind"
    assert all(p.requires_grad for p in m.parameters()), "requires_grad flags restored"


def test_unwrap(tiny_llama):
    m = tiny_llama
    m.push(random_delta(m, 0))
    base = m.unwrap()
    assert not isinstance(base, EditableModel) and type(base).__name__ == "LlamaForCausalLM"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["push", "pop", "remove", "merge", "unmerge"]),
                              st.integers(0, 7)), max_size=14))
def test_property_random_stack_ops_end_bit_exact(tiny_llama, ops):
    """Any push/pop/remove/merge sequence: outputs equal a fresh push of the surviving edits; clear is exact."""
    m = tiny_llama
    h0, l0 = state_dict_hash(m), logits(m)
    pool = [random_delta(m, i, dense=(i % 3 == 0)) for i in range(8)]
    for op, i in ops:
        live = [e.id for e in m.stack]
        if m.is_merged and op in ("push", "pop", "remove"):
            with pytest.raises(StackError):
                getattr(m, op)(pool[i]) if op != "pop" else m.pop()
            continue
        if op == "push" and pool[i].id not in live:
            m.push(pool[i])
        elif op == "pop" and live:
            m.pop()
        elif op == "remove" and pool[i].id in live:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m.remove(pool[i])
        elif op == "merge":
            m.merge()
        elif op == "unmerge":
            m.unmerge()
    m.unmerge()
    survivors = m.stack.edits
    now = logits(m)
    m.clear()
    assert state_dict_hash(m) == h0 and torch.equal(logits(m), l0)
    for e in survivors:
        e.depends_on = []
        m.push(e)
    assert torch.equal(logits(m), now)
    m.clear()
