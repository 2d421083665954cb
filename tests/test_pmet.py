"""PMET and the multi-module value optimisation it needs (tiny random models; one slow real-model test)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from editwrap import Fact, state_dict_hash
from editwrap.arch import arch_of
from editwrap.methods.pmet import PmetHparams
from editwrap.methods.pmet.method import Pmet
from editwrap.ops.exact import exact_paths
from editwrap.ops.hooks import first_tensor, replace_first
from editwrap.ops.keys import context_templates, io_at_subject
from editwrap.ops.tokens import subject_last_index, target_ids
from editwrap.ops.values import ValueHparams, optimize_values

from .conftest import build_tiny

F1 = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
F2 = Fact(prompt="The capital of France is", subject="France", target_new="London Berlin")
F3 = Fact(prompt="Apple was founded by", subject="Apple", target_new="Microsoft")
FAST = dict(mom2_n_tokens=300, v_num_grad_steps=8, context_templates=[(3, 2)], layers=[1, 2])
#: a tiny random model's MLP/attention outputs are tiny, so PMET's reference clamp (1x their norm) and
#: weight decay (÷ their squared norm) hold δ near 0; lifted so the logic test sees an effect
STRONG = dict(FAST, clamp_norm_factor=100.0, v_weight_decay=0.0)
#: subjects ending the prompt: a random model's attention barely carries δ to later positions
G1 = Fact(prompt="The Eiffel Tower is located in the city of", subject="the city of", target_new="Rome")
G2 = Fact(prompt="Apple was founded by", subject="Apple was founded by", target_new="Google")


def logits(m, text="The capital of France is Paris and the tower"):
    with torch.no_grad():
        return m(**m.tokenizer(text, return_tensors="pt")).logits


def target_logprob(m, f: Fact) -> float:
    """log p(target | prompt), teacher-forced."""
    tok = m.tokenizer
    p, t = tok(f.prompt)["input_ids"], target_ids(tok, f.target_new)
    with torch.no_grad():
        lp = m(input_ids=torch.tensor([p + t])).logits[0].log_softmax(-1)
    return float(sum(lp[len(p) - 1 + i, x] for i, x in enumerate(t)))


def greedy_fact(m) -> Fact:
    """A fact whose target is already the model's argmax (exercises the argmax rules)."""
    ids = m.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        t = int(m(**ids).logits[0, -1].argmax())
    word = m.tokenizer.decode([t])
    assert target_ids(m.tokenizer, word) == [t]
    return Fact(prompt="The capital of France is", subject="France", target_new=word.strip())


def reference_values(m, modules, fact, templates, hp: ValueHparams) -> tuple[torch.Tensor, int]:
    """PMET's ``compute_zs`` written plainly (one row per forward, full model): ``[m, d]`` v*, steps."""
    tok = m.tokenizer
    tgt = target_ids(tok, fact.target_new)
    tail = tok.decode(tgt[:-1]) if len(tgt) > 1 else ""
    rewriting = [t.replace("{}", fact.text_prompt) for t in templates]
    texts = [r + tail for r in rewriting] + [f"{fact.subject} is a"]
    look = [subject_last_index(tok, r, fact.subject) for r in rewriting + texts[-1:]]
    ids = [torch.tensor([tok(t)["input_ids"]]) for t in texts]
    d = m.config.hidden_size
    deltas = [torch.zeros(d, requires_grad=True) for _ in modules]
    inits: list = [None] * len(modules)
    row = [0]

    def hook(k):
        def h(_mod, _args, out):
            o = first_tensor(out)
            if inits[k] is None:
                inits[k] = o[0, look[0]].detach().clone()
            o = o.clone()
            o[0, look[row[0]]] = o[0, look[row[0]]] + deltas[k]
            return replace_first(out, o)
        return h

    handles = [m.get_submodule(n).register_forward_hook(hook(k)) for k, n in enumerate(modules)]
    opt = torch.optim.Adam(deltas, lr=hp.v_lr)
    w, init_kl, n = 1.0, None, len(tgt)
    try:
        for step in range(hp.v_num_grad_steps):
            opt.zero_grad()
            nlls, argmax = [], True
            for r in range(len(texts)):
                row[0] = r
                lg = m(input_ids=ids[r]).logits[0]
                if r < len(rewriting):
                    lp = lg[-n:].log_softmax(-1)
                    nlls.append(-lp[torch.arange(n), torch.tensor(tgt)].sum() / n)
                    argmax = argmax and lg[-n:].argmax(-1).tolist() == tgt
                else:
                    kl_lp = lg[look[r]].log_softmax(-1)[None]
            init_kl = kl_lp.detach() if init_kl is None else init_kl
            kl = hp.kl_factor * F.kl_div(init_kl, kl_lp, log_target=True, reduction="batchmean")
            wd = sum(hp.v_weight_decay * dl.norm() / i0.norm() ** 2 for dl, i0 in zip(deltas, inits))
            loss = w * torch.stack(nlls).mean() + kl + wd
            if loss.item() < hp.early_stop_loss:
                break
            if argmax and hp.stop_kl_at_argmax is not None and kl.item() <= hp.stop_kl_at_argmax:
                break
            w = hp.nll_factor_at_argmax if argmax else 1.0
            if step == hp.v_num_grad_steps - 1:
                break
            loss.backward()
            opt.step()
            with torch.no_grad():
                for dl, i0 in zip(deltas, inits):
                    if dl.norm() > hp.clamp_norm_factor * i0.norm():
                        dl.mul_(hp.clamp_norm_factor * i0.norm() / dl.norm())
    finally:
        for h in handles:
            h.remove()
    return torch.stack([i0 + dl.detach() for i0, dl in zip(inits, deltas)]), step + 1


@pytest.mark.parametrize("argmax_rules", [False, True])
def test_two_modules_equal_a_plain_reference_loop(tiny_model, argmax_rules):
    """Batched, prefix-cached, two-module optimisation = PMET's per-fact loop over full forwards."""
    m = tiny_model
    arch = arch_of(m)
    modules = [arch.attn_out_at(2), arch.mlp_out_at(2)]
    templates = context_templates(m, [(3, 2)])
    extra = dict(nll_factor_at_argmax=0.1, stop_kl_at_argmax=0.01) if argmax_rules else {}
    hp = ValueHparams(v_num_grad_steps=6, v_lr=0.3, v_weight_decay=0.05, clamp_norm_factor=1.0, **extra)
    facts = [F1, F2, greedy_fact(m)]
    with exact_paths(batch_facts=4):
        got, init, infos = optimize_values(m, modules, facts, templates, hp)
    assert got.shape == init.shape == (2, 3, m.config.hidden_size)
    for j, f in enumerate(facts):
        want, steps = reference_values(m, modules, f, templates, hp)
        torch.testing.assert_close(got[:, j], want, rtol=1e-4, atol=1e-5)
        assert infos[j]["steps"] == steps
    assert not torch.equal(got[:, 0], init[:, 0]), "both values moved"
    if argmax_rules:
        assert infos[2]["steps"] == 1, "a fact already predicted with no KL change stops at once"
    # v_init of the MLP part is the unpatched MLP output at the subject (template "{}")
    torch.testing.assert_close(init[1], io_at_subject(m, modules[1], facts)[1], rtol=1e-4, atol=1e-5)


def test_single_module_call_is_unchanged(tiny_llama):
    m = tiny_llama
    mod = arch_of(m).mlp_out_at(1)
    templates = context_templates(m, [(3, 2)])
    hp = ValueHparams(v_num_grad_steps=4)
    one, init, _ = optimize_values(m, mod, [F1, F3], templates, hp)
    seq, init_s, _ = optimize_values(m, [mod], [F1, F3], templates, hp)
    assert one.shape == (2, 32) and seq.shape == (1, 2, 32)
    torch.testing.assert_close(seq[0], one, rtol=0, atol=0)
    torch.testing.assert_close(init_s[0], init, rtol=0, atol=0)
    with pytest.raises(ValueError, match="output width"):
        optimize_values(m, [mod, "model.layers.1.mlp.up_proj"], [F1], templates, hp)
    with pytest.raises(ValueError, match="distinct"):
        optimize_values(m, [mod, mod], [F1], templates, hp)


def test_edit_raises_target_probability_and_pops_bit_exact(tiny_model):
    m = tiny_model
    h0, l0 = state_dict_hash(m), logits(m)
    before = [target_logprob(m, f) for f in (G1, G2)]
    e = m.edit([G1, G2], method="pmet", **STRONG)
    after = [target_logprob(m, f) for f in (G1, G2)]
    assert all(a > b + 0.05 for a, b in zip(after, before)), (before, after)
    arch = arch_of(m)
    assert set(e.entry.parts) == {arch.mlp_out_at(1), arch.mlp_out_at(2)}, "only MLP weights change"
    assert e.entry.aux["z"].shape == (2, m.config.hidden_size)
    assert state_dict_hash(m) == h0
    e.pop()
    assert state_dict_hash(m) == h0 and torch.equal(logits(m), l0)
    assert not any(mod._forward_hooks for mod in m.modules()), "pop leaves no hook behind"


def test_solve_shares_the_mlp_residual_by_sqrt_of_layers_left(tiny_llama):
    """First layer's U = (m* − m) / √2 for two layers; resolve from the stored z repeats the edit."""
    m = tiny_llama
    arch = arch_of(m)
    mlp_last = arch.mlp_out_at(2)
    m_before = io_at_subject(m, mlp_last, [F1, F2])[1]
    e = m.compute_edit([F1, F2], method="pmet", **FAST)
    z, hp = e.entry.aux["z"], PmetHparams.model_validate(e.hparams)
    U = e.entry.parts[arch.mlp_out_at(1)]["U"]
    torch.testing.assert_close(U, ((z - m_before).T.double() / 2 ** 0.5).float(), rtol=1e-4, atol=1e-6)
    again = Pmet().resolve(m, [F1, F2], z, hp)
    for name, part in e.entry.parts.items():
        torch.testing.assert_close(again.entry.parts[name]["U"], part["U"], rtol=0, atol=0)
        torch.testing.assert_close(again.entry.parts[name]["V"], part["V"], rtol=0, atol=0)
    # with MEMIT's linear share the first layer takes half instead
    lin = Pmet().resolve(m, [F1, F2], z, hp.model_copy(update={"residual_share_power": 1.0}))
    torch.testing.assert_close(lin.entry.parts[arch.mlp_out_at(1)]["U"], U / 2 ** 0.5, rtol=1e-4, atol=1e-6)


def test_save_and_compose_into_fresh_model(tiny_model, tmp_path, tiny_tokenizer):
    m = tiny_model
    e = m.edit([F1, F2], method="pmet", **FAST)
    m.stack.save(tmp_path / "s")
    edited = logits(m)
    fresh = build_tiny(m.config.model_type, tiny_tokenizer)
    fresh.compose(tmp_path / "s")
    assert fresh.stack[0].method == "pmet"
    torch.testing.assert_close(logits(fresh), edited, rtol=0, atol=0)
    torch.testing.assert_close(fresh.stack[0].entry.aux["z"], e.entry.aux["z"], rtol=0, atol=0)
    e.pop()


def test_defaults_and_bad_hparams(tiny_model):
    m = tiny_model
    hp = Pmet().default_hparams(m)
    gpt2 = arch_of(m).family == "gpt2"
    assert hp.clamp_norm_factor == (0.75 if gpt2 else 1.0) and hp.v_weight_decay == 0.5
    assert hp.residual_share_power == 0.5 and hp.nll_factor_at_argmax == 0.1
    h0 = state_dict_hash(m)
    for bad, field in [(dict(clamp_norm_factor=-1.0), "clamp_norm_factor"),
                       (dict(residual_share_power=-1.0), "residual_share_power"),
                       (dict(stop_kl_at_argmax=-0.1), "stop_kl_at_argmax"),
                       (dict(no_such_field=1), "no_such_field")]:
        with pytest.raises(ValueError, match=field):
            m.edit(F1, method="pmet", **bad)
    with pytest.raises(ValueError, match="out of range"):
        m.edit(F1, method="pmet", layers=[1, 40], mom2_n_tokens=300)
    assert state_dict_hash(m) == h0 and len(m.stack) == 0


@pytest.mark.slow
def test_embedded_two_zsre_facts(embedded):
    from editwrap.evals.metrics import token_accuracy

    m = embedded
    facts = [Fact(prompt="What voice type is Louise Grandjean?", subject="Louise Grandjean",
                  target_new="mezzo soprano"),
             Fact(prompt="What constellation is home to Butterfly Cluster?", subject="Butterfly Cluster",
                  target_new="Orion")]  # two ZsRE records
    h0, l0 = state_dict_hash(m), logits(m)

    def acc() -> float:
        return sum(token_accuracy(m, m.tokenizer, [f.prompt for f in facts], [f.target_new for f in facts])) / 2

    before = acc()
    e = m.edit(facts, method="pmet")
    try:
        after = acc()
    finally:
        e.pop()
    # reference defaults are weak on this 135M model (docs/methods/pmet.md): 0.2 -> 0.3 here
    assert after > before, (before, after)
    assert state_dict_hash(m) == h0 and torch.equal(logits(m), l0)
