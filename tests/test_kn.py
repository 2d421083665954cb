"""Knowledge neurons on tiny random models: the cached attribution equals a plain full-sequence
integrated gradient, the edit is the rank-one column update it claims, pop is bit-exact."""
from __future__ import annotations

import pytest
import torch

from editwrap import Fact, state_dict_hash
from editwrap.arch import arch_of
from editwrap.methods.kn.method import attribution_scores, greedy_tokens, smallest_factor
from editwrap.ops.hooks import get_module
from editwrap.ops.tokens import target_ids

F1 = Fact(prompt="The Eiffel Tower is located in the city of", target_new="Rome London", ground_truth="Paris")


def _plain_ig(m, prompt_ids, answer, layer, steps):
    """Integrated gradients the long way: whole sequences, one layer at a time, no cache."""
    module = get_module(m, arch_of(m).mlp_out_at(layer))
    total = 0
    for i, token in enumerate(answer):
        seq = torch.tensor([prompt_ids + answer[:i]])
        store = {}

        def keep(_m, args, _out):
            store["a"] = args[0][0, -1].detach().clone()
        h = module.register_forward_hook(keep)
        with torch.no_grad():
            m(input_ids=seq)
        h.remove()
        base = store["a"]
        scaled = (torch.linspace(0, 1, steps)[:, None] * base).requires_grad_(True)

        def pre(_m, args):
            x = args[0].clone()
            x[:, -1] = scaled
            return (x,)
        h = module.register_forward_pre_hook(pre)
        probs = torch.softmax(m(input_ids=seq.repeat(steps, 1)).logits[:, -1], -1)[:, token]
        h.remove()
        (g,) = torch.autograd.grad(probs.sum(), scaled)
        total = total + g.sum(0) * base / steps
    return total / len(answer)


@pytest.mark.parametrize("cached", [True, False], ids=["kv-cache", "whole-sequence"])
def test_cached_attribution_equals_plain_integrated_gradients(tiny_model, cached, monkeypatch):
    """Both paths (the KV-cached one, and whole sequences for sliding-window models) equal plain IG."""
    import editwrap.methods.kn.method as kn

    monkeypatch.setattr(kn, "prefix_cache_ok", lambda host: cached)
    m = tiny_model
    ids = m.tokenizer(F1.prompt)["input_ids"]
    answer = target_ids(m.tokenizer, "Paris London")
    layers = [0, 2, 3]
    fast, _ = attribution_scores(m, ids, answer, layers, steps=6, batch_rows=12)  # two layers per pass
    for k, layer in enumerate(layers):
        ref = _plain_ig(m, ids, answer, layer, steps=6)
        torch.testing.assert_close(fast[k], ref, rtol=1e-4, atol=1e-7)


def test_edit_is_a_column_update_and_pop_is_exact(tiny_model):
    m = tiny_model
    h0 = state_dict_hash(m)
    prompt = m.tokenizer(F1.prompt)["input_ids"]
    new = target_ids(m.tokenizer, F1.target_new)
    original = greedy_tokens(m, prompt, len(new))
    e = m.edit(F1, method="kn", steps=4, adaptive_threshold=0.5, follow_sign=False, scale_search=0)  # the reference
    neurons = e.info["neurons"]
    assert neurons and e.info["n_neurons"] == len(neurons)
    emb = m.get_input_embeddings().weight.detach().float()
    c = emb[new].sum(0) - emb[original].sum(0)  # two tokens: scale 1 per token, as the reference
    for module, part in e.entry.parts.items():
        dW = part["U"] @ part["V"].T
        layer = next(i for i in range(arch_of(m).n_layers) if arch_of(m).mlp_out_at(i) == module)
        cols = sorted(p for l_, p in neurons if l_ == layer)
        assert torch.nonzero(dW.abs().sum(0)).squeeze(1).tolist() == cols
        for p in cols:
            torch.testing.assert_close(dW[:, p], c)
    m.pop()
    assert state_dict_hash(m) == h0
    # follow_sign: the same neurons, each column ±c by the sign of its activation at the prompt
    layers = list(range(arch_of(m).n_layers))
    _, acts = attribution_scores(m, prompt, target_ids(m.tokenizer, "Paris"), layers, steps=4)
    e = m.edit(F1, method="kn", steps=4, adaptive_threshold=0.5, scale_search=0)
    assert e.info["neurons"] == neurons
    for module, part in e.entry.parts.items():
        dW = part["U"] @ part["V"].T
        layer = next(i for i in layers if arch_of(m).mlp_out_at(i) == module)
        for l_, p in neurons:
            if l_ == layer:
                torch.testing.assert_close(dW[:, p], c * (1 if acts[layer, p] >= 0 else -1))
    m.pop()
    assert state_dict_hash(m) == h0


def test_scale_search_picks_the_weakest_power_of_two_that_edits(tiny_llama):
    """An update that moves every position towards one token: the factor found is the smallest
    power of two making that token the argmax after the prompt, and the edit stores it applied."""
    m = tiny_llama
    arch = arch_of(m)
    prompt = m.tokenizer("The capital of France is")["input_ids"]
    new = [int(m.tokenizer(" Rome")["input_ids"][0])]
    module = arch.mlp_out_at(arch.n_layers - 1)
    d_in = get_module(m, module).in_features
    emb = m.get_input_embeddings().weight.detach().float()

    def hits(parts, f):
        U, V = parts[module]["U"] * f, parts[module]["V"]
        with torch.no_grad():
            h = get_module(m, module).register_forward_hook(lambda _m, a, out: out + (a[0] @ V) @ U.T)
            try:
                return int(m(input_ids=torch.tensor([prompt])).logits[0, -1].argmax()) == new[0]
            finally:
                h.remove()
    strength = 1.0
    while not hits({module: {"U": emb[new[0]][:, None] * strength, "V": torch.ones(d_in, 1)}}, 1.0):
        strength *= 2
    parts = {module: {"U": emb[new[0]][:, None] * strength * 10, "V": torch.ones(d_in, 1)}}
    f = smallest_factor(m, parts, prompt, new, 6)
    assert 2 ** -6 < f < 1 and hits(parts, f) and not hits(parts, f / 2)
    assert smallest_factor(m, parts, prompt, new, 0) == 1.0
    zero = {module: {"U": emb[new[0]][:, None] * 0, "V": torch.ones(d_in, 1)}}
    assert smallest_factor(m, zero, prompt, new, 6) == 1.0


def test_bad_layers_named_and_model_untouched(tiny_llama):
    m = tiny_llama
    h0 = state_dict_hash(m)
    with pytest.raises(ValueError, match="layers"):
        m.edit(F1, method="kn", layers=[99])
    assert len(m.stack) == 0 and state_dict_hash(m) == h0


@pytest.mark.slow
def test_kn_on_embedded_model_moves_the_answer_and_pops_exactly(embedded):
    m = embedded
    fact = Fact(prompt="The Eiffel Tower is located in the city of", target_new="Rome", ground_truth="Paris")
    h0, before = state_dict_hash(m), m.generate_text(fact.text_prompt, max_new_tokens=4)
    assert before.strip().startswith("Paris")
    with m.edit(fact, method="kn") as e:
        assert e.info["n_neurons"] > 0 and e.info["scale"] < 2.0  # weaker than the reference's 2
        after = m.generate_text(fact.text_prompt, max_new_tokens=6)
        assert after.strip().startswith("Rome") and "Rome Rome" not in after, after
    assert state_dict_hash(m) == h0 and m.generate_text(fact.text_prompt, max_new_tokens=4) == before
