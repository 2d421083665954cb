"""The exact speed-ups of the locate-then-edit pipeline equal the plain path (tiny random models).

* value optimisation: cached prefix vs full forward; facts batched vs one by one;
* key reading: a forward stopped after the read module vs the whole forward;
* the layer spread (MEMIT, AlphaEdit, PMET, consolidation): blocks below the lowest edited layer
  replayed across the layers' key reads vs run for every read.
"""
from __future__ import annotations

import pytest
import torch

from editwrap import Fact
from editwrap.arch import arch_of
from editwrap.ops.exact import exact_paths
from editwrap.ops.hooks import capture
from editwrap.ops.covariance import second_moment
from editwrap.ops.keys import context_templates, io_at_subject
from editwrap.ops.replay import LowerCache
from editwrap.ops.spread import covariance_transform, spread_over_layers
from editwrap.ops.tokens import batch_encode, subject_last_index
from editwrap.ops.train import edit_batch
from editwrap.ops.values import ValueHparams, optimize_values

FACTS = [
    Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome"),
    Fact(prompt="The capital of France is", subject="France", target_new="London Berlin"),
    Fact(prompt="Apple was founded by", subject="Apple", target_new="Microsoft"),
]


def _values(m, module, facts, paths=None, **kw):
    """The value optimisation with the exact speed-ups ``paths`` (``editwrap.ops.exact``)."""
    hp = ValueHparams(v_num_grad_steps=6, early_stop_loss=0.0, **kw)  # no early stop: steps never differ
    torch.manual_seed(0)
    with exact_paths(**(paths or {})):
        return optimize_values(m, module, facts, context_templates(m, [(4, 2)]), hp)


@pytest.mark.parametrize("where", ["mlp", "block"])
def test_prefix_cache_and_fact_batching_equal_the_plain_path(tiny_model, where):
    arch = arch_of(tiny_model)
    module = arch.mlp_out_at(1) if where == "mlp" else arch.block_at(2)
    plain, init0, info0 = _values(tiny_model, module, FACTS, dict(prefix_cache=False, batch_facts=1,
                                                                  replay_lower=False))
    for cache, batch, replay in [(True, 1, False), (False, 3, False), (False, 1, True), (True, 3, True),
                                 (True, 2, True)]:
        got, init, info = _values(tiny_model, module, FACTS, dict(prefix_cache=cache, batch_facts=batch,
                                                                  replay_lower=replay))
        torch.testing.assert_close(init, init0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-4)
        assert [i["steps"] for i in info] == [i["steps"] for i in info0]
        assert [i["loss"] for i in info] == pytest.approx([i["loss"] for i in info0], rel=1e-4, abs=1e-5)
    assert not torch.equal(plain, init0), "the optimisation moved the values"


def test_batched_facts_stop_early_one_by_one(tiny_llama):
    """A fact that reaches the early-stop loss leaves the batch at the same step as alone."""
    module = arch_of(tiny_llama).mlp_out_at(1)
    templates = context_templates(tiny_llama, [(4, 2)])
    short = [optimize_values(tiny_llama, module, [f], templates, ValueHparams(v_num_grad_steps=3, early_stop_loss=0.0))
             for f in FACTS]
    stop = min(o[2][0]["loss"] for o in short) * 1.001  # one fact gets there by step 3
    hp = dict(v_num_grad_steps=8, early_stop_loss=stop)
    one = [optimize_values(tiny_llama, module, [f], templates, ValueHparams(**hp)) for f in FACTS]
    with exact_paths(batch_facts=3):
        both = optimize_values(tiny_llama, module, FACTS, templates, ValueHparams(**hp))
    steps_one = [o[2][0]["steps"] for o in one]
    assert [i["steps"] for i in both[2]] == steps_one and min(steps_one) <= 3
    torch.testing.assert_close(both[0], torch.cat([o[0] for o in one]), rtol=1e-4, atol=1e-4)


def test_key_reading_stops_after_the_module_with_the_same_result(tiny_model):
    m = tiny_model
    module = arch_of(m).mlp_out_at(1)
    k, v = io_at_subject(m, module, FACTS, ("{}", "Hello there. {}"))
    # the same read from a full forward, by hand
    texts = [t.replace("{}", f.text_prompt) for f in FACTS for t in ("{}", "Hello there. {}")]
    idx = [subject_last_index(m.tokenizer, s, f.subject) for f in FACTS for s in
           [t.replace("{}", f.text_prompt) for t in ("{}", "Hello there. {}")]]
    enc = batch_encode(m.tokenizer, texts, "cpu")
    with torch.no_grad(), capture(m, [module]) as cap:
        m(**enc)
    rows = torch.arange(len(texts))
    k_full = cap[module]["input"][rows, idx].view(3, 2, -1).mean(1)
    v_full = cap[module]["output"][rows, idx].view(3, 2, -1).mean(1)
    torch.testing.assert_close(k, k_full)
    torch.testing.assert_close(v, v_full)


def test_lower_blocks_replayed_across_reads_give_the_same_keys(tiny_model):
    m = tiny_model
    templates = ("{}", "Hello there. {}")
    lower = LowerCache(m, [arch_of(m).mlp_out_at(3), arch_of(m).mlp_out_at(2)])  # replays below the lower
    calls = []
    hook = m.get_submodule(arch_of(m).mlp_out_at(0)).register_forward_hook(lambda *_: calls.append(1))
    try:
        for layer in (2, 3, 2):  # first read records, later reads (other modules, same texts) replay
            module = arch_of(m).mlp_out_at(layer)
            n0 = len(calls)
            k, v = io_at_subject(m, module, FACTS, templates, batch_size=2, lower=lower)
            computed = len(calls) - n0
            k0, v0 = io_at_subject(m, module, FACTS, templates, batch_size=2)
            assert torch.equal(k, k0) and torch.equal(v, v0)
            assert computed == (3 if layer == 2 and n0 == 0 else 0), "block 0 runs only in the first read"
    finally:
        hook.remove()
    assert len(lower.by_batch) == 3  # 6 texts in batches of 2, recorded once each


def test_spread_with_lower_blocks_replayed_equals_the_plain_spread(tiny_model):
    m = tiny_model
    arch = arch_of(m)
    modules, z_module = [arch.mlp_out_at(i) for i in (1, 2, 3)], arch.block_at(3)
    templates = context_templates(m, [(4, 2)])
    covs = second_moment(m, modules, n_tokens=300, progress=False)
    zs = torch.randn(len(FACTS), m.config.hidden_size, generator=torch.Generator().manual_seed(0))
    out = []
    for replay in (True, False):
        keys: dict = {}
        parts = spread_over_layers(m, modules, z_module, FACTS, templates, zs, covariance_transform(covs, 1e3),
                                   keys_out=keys, replay_lower=replay)
        out.append((parts, keys))
    (p1, k1), (p0, k0) = out
    for mod in modules:
        assert torch.equal(p1[mod]["U"], p0[mod]["U"]) and torch.equal(p1[mod]["V"], p0[mod]["V"])
        assert torch.equal(k1[mod], k0[mod])
    assert not torch.equal(k0[modules[2]], io_at_subject(m, modules[2], FACTS, templates)[0]), \
        "the upper keys were read with the lower layers' updates applied"


@pytest.mark.parametrize("method", ["ft-m", "ft-l"])
def test_fine_tuning_fast_path_equals_the_plain_path(tiny_model, method):
    """FT with the lower blocks replayed and only target positions projected: same delta."""
    m = tiny_model
    kw = dict(num_steps=5, lr=5e-3, early_stop_loss=0.0, norm_constraint=None, layers=[2])
    with exact_paths(fast_path=False):
        plain = m.compute_edit(FACTS[:2], method=method, **kw)
    fast = m.compute_edit(FACTS[:2], method=method, **kw)
    for mod, part in plain.entry.parts.items():
        assert part["D"].abs().max() > 0
        torch.testing.assert_close(fast.entry.parts[mod]["D"], part["D"], rtol=1e-4, atol=1e-6)
    assert fast.info["loss"] == pytest.approx(plain.info["loss"], rel=1e-4)


def test_row_normalised_optimiser_batches_exactly_and_moves_along_the_gradient(tiny_llama):
    """``v_optimizer="ngd"``: facts batched equal facts alone; each step moves δ by exactly v_lr."""
    module = arch_of(tiny_llama).mlp_out_at(1)
    kw = dict(v_optimizer="ngd", v_lr=0.3)
    alone = [_values(tiny_llama, module, [f], dict(batch_facts=1), **kw) for f in FACTS]
    both = _values(tiny_llama, module, FACTS, dict(batch_facts=3), **kw)
    torch.testing.assert_close(both[0], torch.cat([a[0] for a in alone]), rtol=1e-4, atol=1e-4)
    moved = (both[0] - both[1]).norm(dim=-1)
    assert bool((moved <= 6 * 0.3 + 1e-4).all()) and bool((moved > 0).all())  # 6 steps of length 0.3 at most
    one = optimize_values(tiny_llama, module, FACTS[:1], context_templates(tiny_llama, [(4, 2)]),
                          ValueHparams(v_num_grad_steps=2, early_stop_loss=0.0, clamp_norm_factor=1e3, **kw))
    assert float((one[0] - one[1]).norm()) == pytest.approx(0.3, rel=1e-4)  # step 2 only measures
    adam = _values(tiny_llama, module, FACTS, dict(batch_facts=3), v_lr=0.3)
    assert not torch.allclose(adam[0], both[0])
    with pytest.raises(ValueError, match="v_optimizer"):
        ValueHparams(v_optimizer="sgd")


def test_grace_fast_path_equals_the_plain_path_over_a_stack(tiny_model):
    """GRACE with the lower blocks replayed and only target positions projected: the same codebook
    rows, also on a stack that already holds a codebook below the edited layer (its hook runs
    inside a replayed block, so its effect is recorded, not applied twice)."""
    m = tiny_model
    m.edit(FACTS[2], method="grace", layer=1, n_iter=3)  # a codebook below
    try:
        kw = dict(layer=3, n_iter=6, early_stop_loss=0.0)
        block0 = m.get_submodule(arch_of(m).block_at(0))
        calls, real = [], block0.forward
        block0.forward = lambda *a, **k: calls.append(1) or real(*a, **k)
        with exact_paths(fast_path=False):
            plain = m.compute_edit(FACTS[:2], method="grace", **kw)
        n_plain = len(calls)
        fast = m.compute_edit(FACTS[:2], method="grace", **kw)
    finally:
        m.pop()
        del block0.forward
    # per fact: the key read, then 6 steps (plain) or the first step only (fast)
    assert (n_plain, len(calls) - n_plain) == (2 * 7, 2 * 2)
    assert plain.entry.values.shape[0] == 2
    torch.testing.assert_close(fast.entry.values, plain.entry.values, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.entry.keys, plain.entry.keys)
    assert fast.info["loss"] == pytest.approx(plain.info["loss"], rel=1e-4)


def test_wise_fast_path_equals_the_plain_path(tiny_model):
    """WISE's side memory trained with the lower blocks replayed and only the facts' target
    positions projected (its out-of-scope row still runs, for the activation margins): same delta."""
    kw = dict(layer=2, n_iter=5, loc_corpus="fact")
    with exact_paths(fast_path=False):
        plain = tiny_model.compute_edit(FACTS[:2], method="wise", **kw)
    fast = tiny_model.compute_edit(FACTS[:2], method="wise", **kw)
    assert plain.entry.delta.abs().max() > 0
    torch.testing.assert_close(fast.entry.delta, plain.entry.delta, rtol=1e-4, atol=1e-6)
    assert fast.info["loss"] == pytest.approx(plain.info["loss"], rel=1e-4)


def test_wise_fast_path_over_a_wise_stack_projects_only_target_positions(tiny_model):
    """With a WISE memory already on the stack, its padding mask is read on the backbone, not the
    host, so the next WISE edit still projects only the target positions (the host's full head
    ran on every position before) and equals the plain path."""
    m = tiny_model
    kw = dict(layer=2, n_iter=4, loc_corpus="fact")
    m.edit(FACTS[2], method="wise", **kw)
    head = m.get_output_embeddings()
    rows: list[int] = []
    handle = head.register_forward_hook(lambda _m, a, _o: rows.append(a[0].reshape(-1, a[0].shape[-1]).shape[0]))
    try:
        assert not m._forward_hooks and not m._forward_pre_hooks
        fast = m.compute_edit(FACTS[:2], method="wise", **kw)
        n_fast = list(rows)
        with exact_paths(fast_path=False):
            plain = m.compute_edit(FACTS[:2], method="wise", **kw)
    finally:
        handle.remove()
        m.pop()
    _, labels = edit_batch(m, FACTS[:2], "target_new")
    n_targets = int((labels != -100).sum())
    # a full forward reads the inputs, then the 4 training steps, then a full scoring forward
    assert n_fast[1:5] == [n_targets] * 4 and n_fast[0] == n_fast[5] > n_targets
    torch.testing.assert_close(fast.entry.delta, plain.entry.delta, rtol=1e-4, atol=1e-6)
