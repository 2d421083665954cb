"""Norm-Anchor Scaling (``norm_anchor``) and the reference key averaging (``key_average``) of
MEMIT and AlphaEdit, on tiny random models, against hand computations."""
from __future__ import annotations

import pytest
import torch

from editwrap import Fact, state_dict_hash
from editwrap.arch import arch_of
from editwrap.methods.alphaedit import AlphaEditHparams
from editwrap.methods.alphaedit.method import AlphaEdit, null_space_projector
from editwrap.ops.anchor import anchor_norm, rescale_values, trimmed_mean
from editwrap.ops.covariance import second_moment
from editwrap.ops.keys import ValueHparams, context_templates, io_at_subject, optimize_values

from .conftest import build_tiny

F1 = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
F2 = Fact(prompt="The capital of France is", subject="France", target_new="London")
F3 = Fact(prompt="Apple was founded by", subject="Apple", target_new="Microsoft")
FAST = dict(mom2_n_tokens=300, v_num_grad_steps=4, context_templates=[(3, 2)], layers=[1, 2])


def _z0_v0(m, facts, layer=2):
    """Block output and MLP output at the last subject token of the bare prompt, read directly."""
    a = arch_of(m)
    return (io_at_subject(m, a.block_at(layer), facts, ("{}",))[1],
            io_at_subject(m, a.mlp_out_at(layer), facts, ("{}",))[1])


def test_trimmed_mean_drops_the_largest_five_percent():
    assert trimmed_mean(range(1, 21)) == sum(range(1, 20)) / 19  # floor(0.05 * 20) = 1 dropped
    assert trimmed_mean([3.0, 5.0]) == 4.0                      # floor(0.1) = 0 dropped


def test_rescale_values_by_hand():
    z0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    v0 = torch.tensor([[0.5, 0.0], [0.0, 1.0]])
    zs = torch.tensor([[1.0, 3.5], [0.0, 12.0]])
    # v* = zs - z0 + v0: [0.5, 3.5] (norm √12.5 ≈ 3.54) and [0, 11] (norm 11 > 2 · 3: dropped)
    z, norms, dropped = rescale_values(zs, z0, v0, 3.0)
    s = 3.0 / (12.5 ** 0.5)
    torch.testing.assert_close(z[0], torch.tensor([0.5 + 0.5 * s, 3.5 * s]))
    torch.testing.assert_close(z[1], z0[1])  # dropped: z = (z0 - v0) + v0
    torch.testing.assert_close(norms, torch.tensor([12.5 ** 0.5, 11.0]))
    assert dropped.tolist() == [False, True]


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_anchored_values_have_the_measured_reference_norm(tiny_model, method):
    m = tiny_model
    facts = [F1, F2]
    z0, v0 = _z0_v0(m, facts)
    h0 = state_dict_hash(m)
    # the anchor of a first edit: the trimmed mean of its facts' ‖v*‖, solved on the unedited model
    raw, _, _ = optimize_values(m, arch_of(m).block_at(2), facts, context_templates(m, FAST["context_templates"]),
                                ValueHparams(**FAST))
    v_star = raw.double() - z0.double() + v0.double()
    norms = v_star.norm(dim=-1)
    e = m.edit(facts, method=method, norm_anchor=True, **FAST)
    rec = e.info["norm_anchor"]
    assert rec["measured"] and rec["module"] == arch_of(m).block_at(2) and rec["dropped"] == 0
    assert rec["norm"] == pytest.approx(trimmed_mean(norms.tolist()), rel=1e-6)
    v_new = e.entry.aux["z"].double() - z0.double() + v0.double()
    torch.testing.assert_close(v_new.norm(dim=-1), torch.full((2,), rec["norm"], dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    # the direction of each v* is kept
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(v_new, v_star, dim=-1),
                               torch.ones(2, dtype=torch.float64))
    e.pop()
    assert state_dict_hash(m) == h0


def test_off_is_the_plain_path_bit_for_bit(tiny_llama):
    m = tiny_llama
    h0 = state_dict_hash(m)
    raw, _, _ = optimize_values(m, arch_of(m).block_at(2), [F1, F2], context_templates(m, FAST["context_templates"]),
                                ValueHparams(**FAST))
    a = m.edit([F1, F2], method="alphaedit", **FAST)
    parts = {k: {n: t.clone() for n, t in p.items()} for k, p in a.entry.parts.items()}
    assert torch.equal(a.entry.aux["z"], raw) and "norm_anchor" not in a.info
    a.pop()
    b = m.edit([F1, F2], method="alphaedit", norm_anchor=False, key_average="templates", **FAST)
    for k, p in parts.items():
        assert torch.equal(b.entry.parts[k]["U"], p["U"]) and torch.equal(b.entry.parts[k]["V"], p["V"])
    b.pop()
    assert state_dict_hash(m) == h0


def test_anchor_is_carried_by_the_stack_through_save_and_reload(tiny_llama, tiny_tokenizer, tmp_path):
    m = tiny_llama
    h0 = state_dict_hash(m)
    e1 = m.edit([F1, F2], method="memit", norm_anchor=True, **FAST)
    e2 = m.edit([F3], method="alphaedit", norm_anchor=True, **FAST)
    anchor, mod = e1.info["norm_anchor"]["norm"], arch_of(m).block_at(2)
    assert not e2.info["norm_anchor"]["measured"] and e2.info["norm_anchor"]["norm"] == anchor
    m.stack.save(tmp_path / "s")
    fresh = build_tiny("llama", tiny_tokenizer)
    fresh.compose(tmp_path / "s")
    assert anchor_norm(fresh, mod, None) == anchor and anchor_norm(fresh, mod, 2.5) == 2.5
    text = m.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(fresh(**text).logits, m(**text).logits, rtol=0, atol=0)
    e2.pop()
    e1.pop()
    assert state_dict_hash(m) == h0


def test_consolidation_keeps_the_anchor_on_the_stack(tiny_llama):
    m = tiny_llama
    h0 = state_dict_hash(m)
    e1 = m.edit([F1], method="memit", norm_anchor=True, **FAST)
    e2 = m.edit([F2], method="memit", norm_anchor=True, **FAST)
    merged = m.stack.consolidate()
    assert merged.info["norm_anchor"]["norm"] == e1.info["norm_anchor"]["norm"]
    torch.testing.assert_close(merged.entry.aux["z"], torch.cat([e1.entry.aux["z"], e2.entry.aux["z"]]))
    e3 = m.edit([F3], method="memit", norm_anchor=True, **FAST)
    assert e3.info["norm_anchor"]["norm"] == e1.info["norm_anchor"]["norm"]
    e3.pop()
    merged.pop()
    assert state_dict_hash(m) == h0


def test_missing_anchor_is_refused_and_the_model_left_untouched(tiny_llama):
    m = tiny_llama
    e = m.edit([F1], method="memit", **FAST)
    h1 = state_dict_hash(m)
    with pytest.raises(ValueError, match="norm_anchor_value"):
        m.edit([F2], method="memit", norm_anchor=True, **FAST)
    assert len(m.stack) == 1 and state_dict_hash(m) == h1
    given = m.edit([F2], method="memit", norm_anchor=True, norm_anchor_value=3.0, **FAST)
    assert given.info["norm_anchor"]["norm"] == 3.0 and not given.info["norm_anchor"]["measured"]
    given.pop()
    e.pop()


def _reference_keys(m, module, facts, spec):
    """The reference ``compute_ks``: the mean over each context type (the bare prompt; the
    generated prefixes), then the mean over the types."""
    templates = context_templates(m, spec)
    per = torch.stack([io_at_subject(m, module, facts, (t,))[0] for t in templates], 1).double()  # [n, T, d]
    return torch.stack([per[:, :1].mean(1), per[:, 1:].mean(1)], 1).mean(1)  # [n, d]


def test_alphaedit_reference_keys_match_the_reference_formula(tiny_llama):
    m = tiny_llama
    a = arch_of(m)
    mod, block = a.mlp_out_at(2), a.block_at(2)
    cov = second_moment(m, [mod], n_tokens=300, progress=False)[mod]
    thr = float(torch.linalg.eigvalsh(cov.double())[len(cov) // 2])
    hp = AlphaEditHparams(**{**FAST, "layers": [2]}, nullspace_threshold=thr, L2=10.0, key_average="context_types")
    P = null_space_projector(cov, thr)
    e1 = m.edit([F1], method="alphaedit", **hp.model_dump())
    # the reference's cache_c: the first batch's keys read with its update applied
    k1 = _reference_keys(m, mod, [F1], FAST["context_templates"])
    torch.testing.assert_close(e1.entry.aux[f"keys::{mod}"].double(), k1.T, rtol=1e-5, atol=1e-6)
    facts = [F2, F3]
    z0 = io_at_subject(m, block, facts, ("{}",))[1]
    zs = z0 + torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    edit = AlphaEdit().resolve(m, facts, zs, hp)
    K = _reference_keys(m, mod, facts, FAST["context_templates"]).T  # [d_in, n]
    resid = (zs - z0).double().T  # one layer: the whole residual
    cache_c = k1.T @ k1
    upd = torch.linalg.solve(P @ (K @ K.T + cache_c) + 10.0 * torch.eye(P.shape[0], dtype=torch.float64),
                             P @ K @ resid.T)  # [d_in, d_out], as AlphaEdit_main.py
    part = edit.entry.parts[mod]
    torch.testing.assert_close((part["U"].double() @ part["V"].double().T), upd.T, rtol=1e-4, atol=1e-6)
    # the default (plain mean over the prompts) is a different key
    plain = io_at_subject(m, mod, facts, context_templates(m, FAST["context_templates"]))[0].double()
    assert not torch.allclose(plain, K.T)
    e1.pop()


def _tiny_gemma3(tokenizer):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from editwrap import EditableModel

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                           pad_token_id=tokenizer.pad_token_id, sliding_window=64)
    model = Gemma3ForCausalLM(cfg).eval()
    for name, p in model.named_parameters():  # Gemma's norms start at a zero gain: give them one
        if "norm" in name:
            torch.nn.init.normal_(p, std=0.5)
    return EditableModel.wrap(model, tokenizer)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_the_residual_part_is_what_enters_the_mlp(arch, tiny_tokenizer):
    """``z₀ − v₀`` is the residual stream the layer's MLP reads from: the MLP's whole contribution
    (after Gemma's post-MLP norm) is ``v₀``, so only it is rescaled."""
    from editwrap.ops.anchor import mlp_values

    m = build_tiny("llama", tiny_tokenizer) if arch == "llama" else _tiny_gemma3(tiny_tokenizer)
    facts = [F1, F2]
    z0 = io_at_subject(m, arch_of(m).block_at(2), facts, ("{}",))[1]
    mid = "post_attention_layernorm" if arch == "llama" else "pre_feedforward_layernorm"
    resid = io_at_subject(m, f"model.layers.2.{mid}", facts, ("{}",))[0]
    torch.testing.assert_close(z0 - mlp_values(m, 2, facts), resid, rtol=1e-5, atol=1e-5)
