"""AlphaEdit on tiny random models: null-space property, stack-owned key state, save/load, pop."""
from __future__ import annotations

import pytest
import torch

from editwrap import Fact, state_dict_hash
from editwrap.arch import arch_of
from editwrap.methods.alphaedit.method import null_space_projector, stack_keys
from editwrap.ops.covariance import second_moment
from editwrap.ops.keys import io_at_subject

from .conftest import build_tiny

F1 = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
F2 = Fact(prompt="The capital of France is", subject="France", target_new="London")
F3 = Fact(prompt="Apple was founded by", subject="Apple", target_new="Microsoft")
FAST = dict(mom2_n_tokens=300, v_num_grad_steps=4, context_templates=[(3, 2)], layers=[1, 2])


def _hp(m, **kw):
    cov = second_moment(m, [arch_of(m).mlp_out_at(1)], n_tokens=300, progress=False)[arch_of(m).mlp_out_at(1)]
    evals = torch.linalg.eigvalsh(cov.double())
    # a threshold that leaves about half of the key directions protected
    return {**FAST, "nullspace_threshold": float(evals[len(evals) // 2]), **kw}


def logits(m, text="The capital of France is Paris and the tower"):
    with torch.no_grad():
        return m(**m.tokenizer(text, return_tensors="pt")).logits


def test_update_leaves_preserved_keys_unchanged(tiny_model):
    m = tiny_model
    hp = _hp(m)
    e = m.edit([F1, F2], method="alphaedit", **hp)
    modules = [arch_of(m).mlp_out_at(i) for i in FAST["layers"]]
    covs = second_moment(m, modules, n_tokens=300, progress=False)
    for mod in modules:
        P = null_space_projector(covs[mod], hp["nullspace_threshold"])
        part = e.entry.parts[mod]
        dW = (part["U"] @ part["V"].T).double()
        assert dW.norm() > 0
        x = torch.randn(P.shape[0], 16, dtype=torch.float64)
        preserved = x - P @ x  # keys outside the null space: the preserved knowledge
        assert (dW @ preserved).norm() <= 1e-6 * dW.norm() * preserved.norm()
        assert 0 < int(e.info["null_dims"][mod]) < P.shape[0]
    e.pop()


def test_stack_keys_are_state_of_the_stack(tiny_llama, tmp_path, tiny_tokenizer):
    m = tiny_llama
    h0, l0 = state_dict_hash(m), logits(m)
    hp = _hp(m)
    e1 = m.edit([F1], method="alphaedit", **hp)
    mod = arch_of(m).mlp_out_at(2)
    assert e1.info["protected"] == [] and e1.entry.aux[f"keys::{mod}"].shape[1] == 1
    assert e1.entry.aux["z"].shape[0] == 1
    e2 = m.edit([F2, F3], method="alphaedit", **hp)
    assert e2.info["protected"] == [e1.id]
    kk, ids = stack_keys(m, mod)
    k1, k2 = e1.entry.aux[f"keys::{mod}"].double(), e2.entry.aux[f"keys::{mod}"].double()
    torch.testing.assert_close(kk, k1 @ k1.T + k2 @ k2.T)
    assert ids == [e1.id, e2.id]
    # the third edit protects what a fresh process sees after reloading the saved stack
    m.stack.save(tmp_path / "s")
    edited = logits(m)
    fresh = build_tiny("llama", tiny_tokenizer)  # the same base weights, no edits
    fresh.compose(tmp_path / "s")
    torch.testing.assert_close(logits(fresh), edited, rtol=0, atol=0)
    kk2, ids2 = stack_keys(fresh, mod)
    torch.testing.assert_close(kk2, kk)
    assert ids2 == ids
    e2.pop()
    assert stack_keys(m, mod)[1] == [e1.id], "popping an entry stops protecting its keys"
    e1.pop()
    assert state_dict_hash(m) == h0 and torch.equal(logits(m), l0)


def test_stored_keys_are_the_keys_read_with_the_edit_applied(tiny_llama):
    """The stored keys come from the spread (each layer read with the layers below updated); they
    must equal a fresh read with the whole edit on the stack, which is what the reference stores."""
    from editwrap.ops.keys import context_templates
    m = tiny_llama
    hp = _hp(m, layers=[0, 1, 2])
    e = m.edit([F1, F2, F3], method="alphaedit", **hp)
    templates = context_templates(m, hp["context_templates"])
    for layer in hp["layers"]:
        mod = arch_of(m).mlp_out_at(layer)
        fresh = io_at_subject(m, mod, [F1, F2, F3], templates)[0].T
        torch.testing.assert_close(e.entry.aux[f"keys::{mod}"], fresh, rtol=0, atol=0)  # same forwards
    # and they differ from the pre-edit keys above the lowest layer, so the test can fail
    e.pop()
    mod = arch_of(m).mlp_out_at(2)
    before = io_at_subject(m, mod, [F1, F2, F3], templates)[0].T
    assert (e.entry.aux[f"keys::{mod}"] - before).abs().max() > 1e-6


def test_protection_reduces_interference_with_earlier_edit(tiny_llama):
    """With the earlier edit's keys protected, a later edit moves that edit's z less."""
    m = tiny_llama
    hp = _hp(m)
    z_mod = arch_of(m).block_at(2)
    e1 = m.edit([F1], method="alphaedit", **hp)
    z1 = io_at_subject(m, z_mod, [F1])[1]
    drift = {}
    for protect in (True, False):
        e2 = m.edit([F2, F3], method="alphaedit", protect_stack_keys=protect, **hp)
        drift[protect] = float((io_at_subject(m, z_mod, [F1])[1] - z1).norm())
        e2.pop()
    e1.pop()
    assert drift[True] < drift[False]


def test_bad_hparams_are_refused(tiny_llama):
    h0 = state_dict_hash(tiny_llama)
    with pytest.raises(ValueError, match="nullspace_threshold"):
        tiny_llama.edit(F1, method="alphaedit", nullspace_threshold=-1.0)
    with pytest.raises(ValueError, match="out of range"):
        tiny_llama.edit(F1, method="alphaedit", layers=[1, 40], mom2_n_tokens=300)
    assert state_dict_hash(tiny_llama) == h0 and len(tiny_llama.stack) == 0
