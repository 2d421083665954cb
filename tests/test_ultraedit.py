"""UltraEdit: closed-form edits from keys and output gradients, with lifelong statistics on the stack."""
from __future__ import annotations

import json

import pytest
import torch

from editwrap import EditableModel, Fact, state_dict_hash
from editwrap.entries.delta import DeltaEntry
from editwrap.methods.ultraedit.hparams import UltraEditHparams
from editwrap.methods.ultraedit.method import RunningStats, answer_rows, ridge_factors, whiten_keys

from .conftest import KNOWEDIT_DIR, build_tiny

FACTS = [Fact(prompt="The Eiffel Tower is located in the city of", target_new="Rome"),
         Fact(prompt="The capital of France is", target_new="London"),
         Fact(prompt="Apple was founded by", target_new="Google")]
#: tiny random models have keys of norm ~0.1, so the reference's absolute ridge of 1 would swamp them
TINY = dict(ridge=1e-4, lr=0.1)


def target_logprob(m, facts) -> torch.Tensor:
    """Summed log-probability of each fact's target tokens, teacher-forced."""
    seqs, cols, tgts = answer_rows(m.tokenizer, facts)
    out = []
    with torch.no_grad():
        for s, c, t in zip(seqs, cols, tgts):
            lp = m(input_ids=torch.tensor([s])).logits[0].log_softmax(-1)
            out.append(lp[c, t].sum())
    return torch.stack(out)


def logits(m, text="The capital of France is Paris and the tower"):
    with torch.no_grad():
        return m(**m.tokenizer(text, return_tensors="pt")).logits


@pytest.mark.parametrize("key_space", ["whitened", "raw"])
def test_edit_raises_targets_and_pops_bit_exact(tiny_model, key_space):
    m = tiny_model
    h0, l0, lp0 = state_dict_hash(m), logits(m), target_logprob(m, FACTS)
    e = m.edit(FACTS, method="ultraedit", key_space=key_space, **TINY)
    lp1 = target_logprob(m, FACTS)
    assert (lp1 > lp0 + 1.0).all(), (lp0, lp1)
    assert isinstance(e.entry, DeltaEntry) and state_dict_hash(m) == h0
    n_pos = sum(len(c) for c in answer_rows(m.tokenizer, FACTS)[1])
    for part in e.entry.parts.values():
        assert part["U"].shape[1] == part["V"].shape[1] == n_pos, "rank = number of answer positions"
        assert part["norm_count"].item() == n_pos + UltraEditHparams().norm_prior_count
    assert e.info["stats_from"] is None and e.info["n_positions"] == n_pos
    assert not any(p.grad is not None for p in m.parameters()), "no model parameter gets a gradient"
    e.pop()
    assert state_dict_hash(m) == h0 and torch.equal(logits(m), l0)
    assert not any(mod._forward_hooks for mod in m.modules())


def test_edit_changes_argmax_of_first_target_token(tiny_llama):
    m = tiny_llama
    seqs, cols, tgts = answer_rows(m.tokenizer, FACTS)
    with m.edit(FACTS, method="ultraedit", ridge=1e-4, lr=1.0):
        with torch.no_grad():
            hits = [m(input_ids=torch.tensor([s])).logits[0, c[0]].argmax().item() == t[0]
                    for s, c, t in zip(seqs, cols, tgts)]
    assert all(hits), hits


def test_statistics_chain_through_the_stack(tiny_llama):
    m = tiny_llama
    e1 = m.edit(FACTS[:1], method="ultraedit", **TINY)
    ref = m.compute_edit(FACTS[2:], method="ultraedit", **TINY)  # what an edit on top of e1 reads
    e2 = m.edit(FACTS[1:2], method="ultraedit", **TINY)
    assert e2.info["stats_from"] == e1.id and not e2.info["stats_fresh_modules"]
    name = next(iter(e1.entry.parts))
    n1, n2 = (e.entry.parts[name]["norm_count"].item() for e in (e1, e2))
    assert n2 == n1 + e2.info["n_positions"]
    # an edit of another method on top does not break the chain
    m.edit(Fact(prompt="Hello", target_new="world"), method="ft-l", num_steps=1)
    e3 = m.edit(FACTS[2:], method="ultraedit", **TINY)
    assert e3.info["stats_from"] == e2.id
    m.pop()
    m.pop()
    e2.pop()
    e4 = m.edit(FACTS[2:], method="ultraedit", **TINY)
    assert e4.info["stats_from"] == e1.id
    for k in ("norm_mean", "norm_var", "norm_count", "U", "V"):
        assert torch.equal(e4.entry.parts[name][k], ref.entry.parts[name][k]), k
    m.clear()


def test_running_stats_merge_equals_one_pass():
    x = torch.randn(50, 7, dtype=torch.float64) * 3 + 1
    s = RunningStats.prior(7, 0.0).update(x[:20]).update(x[20:21]).update(x[21:])
    assert torch.allclose(s.mean, x.mean(0)) and torch.allclose(s.var, x.var(0, unbiased=False))
    assert s.count == 50
    z = s.standardise(x)
    assert torch.allclose(z.mean(0), torch.zeros(7, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(z.std(0), torch.ones(7, dtype=torch.float64), atol=1e-6)


def test_ridge_factors_equal_reference_solve():
    """``U Vᵀ`` equals the reference's ``((KᵀK + λI)⁻¹KᵀV)ᵀ`` (push-through identity)."""
    g = torch.Generator().manual_seed(0)
    K, V = torch.randn(5, 12, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    U, Vf = ridge_factors(K, V, 0.3)
    ref = torch.linalg.solve(K.T @ K + 0.3 * torch.eye(12, dtype=K.dtype), K.T @ V).T
    assert U.shape == (4, 5) and Vf.shape == (12, 5) and torch.allclose(U @ Vf.T, ref, atol=1e-10)
    # whitened metric: K S⁻¹ by Sherman-Morrison equals the explicit inverse
    stats = RunningStats.prior(12, 0.0).update(torch.randn(40, 12, generator=g, dtype=torch.float64) + 2)
    d = stats.var + 0.1 * stats.var.mean()
    S = torch.diag(d) + torch.outer(stats.mean, stats.mean)
    assert torch.allclose(whiten_keys(K, stats, 12, 0.1), torch.linalg.solve(S, K.T).T, atol=1e-8)


def test_save_load_continues_with_same_statistics(tiny_model, tmp_path, tiny_tokenizer):
    m = tiny_model
    e1 = m.edit(FACTS[:2], method="ultraedit", **TINY)
    edited = logits(m)
    m.stack.save(tmp_path / "s")
    kind = "llama" if m.config.model_type == "llama" else "gpt2"
    fresh = build_tiny(kind, tiny_tokenizer)
    fresh.compose(tmp_path / "s")
    assert torch.equal(logits(fresh), edited)
    loaded = fresh.stack[0]
    for name, part in e1.entry.parts.items():
        assert set(loaded.entry.parts[name]) == {"U", "V", "norm_mean", "norm_var", "norm_count"}
        for k, t in part.items():
            assert torch.equal(loaded.entry.parts[name][k], t)
    a = m.edit(FACTS[2:], method="ultraedit", **TINY)
    b = fresh.edit(FACTS[2:], method="ultraedit", **TINY)
    assert b.info["stats_from"] == e1.id == a.info["stats_from"]
    for name in a.entry.parts:
        for k in a.entry.parts[name]:
            assert torch.allclose(a.entry.parts[name][k], b.entry.parts[name][k], rtol=1e-5, atol=1e-6), k
    assert torch.allclose(logits(m), logits(fresh), atol=1e-5)
    # nbytes counts the statistics too
    d_sum = sum(p["norm_mean"].numel() for p in e1.entry.parts.values())
    assert e1.entry.nbytes() >= 4 * (2 * d_sum)
    m.clear()
    fresh.clear()


def test_from_pretrained_with_stack(tiny_llama, tmp_path):
    m = tiny_llama
    m.save_pretrained(tmp_path / "base")
    m.tokenizer.save_pretrained(tmp_path / "base")
    m.edit(FACTS, method="ultraedit", **TINY)
    m.stack.save(tmp_path / "stack")
    manifest = json.loads((tmp_path / "stack" / "edits.json").read_text())
    assert manifest["edits"][0]["method"] == "ultraedit" and "stats_from" in manifest["edits"][0]["info"]
    again = EditableModel.from_pretrained(tmp_path / "base", stack=tmp_path / "stack")
    assert torch.equal(logits(again), logits(m))
    m.clear()


@pytest.mark.parametrize("bad, field", [({"lr": 0}, "lr"), ({"ridge": -1.0}, "ridge"), ({"layers": []}, "layers"),
                                        ({"layers": [1, 1]}, "layers"), ({"key_space": "cosine"}, "key_space"),
                                        ({"norm_prior_count": -1}, "norm_prior_count"), ({"lrate": 1.0}, "lrate")])
def test_bad_hparams_are_refused(tiny_llama, bad, field):
    with pytest.raises(ValueError, match=field):
        tiny_llama.edit(FACTS[0], method="ultraedit", **bad)
    assert len(tiny_llama.stack) == 0


def test_layer_out_of_range_and_subject_free(tiny_llama):
    with pytest.raises(ValueError, match="out of range"):
        tiny_llama.edit(FACTS[0], method="ultraedit", layers=[40])
    assert len(tiny_llama.stack) == 0
    hp = tiny_llama.default_hparams("ultraedit")
    assert all(0 <= i < 4 for i in hp.layers)
    with tiny_llama.edit(FACTS[0], method="ultraedit", **TINY) as e:  # no subject needed
        assert e.facts[0].subject is None


@pytest.mark.slow
def test_embedded_zsre_edit_and_pop(embedded):
    from editwrap.evals.datasets import load_dataset
    from editwrap.evals.metrics import token_accuracy

    m = embedded
    facts = load_dataset("zsre", KNOWEDIT_DIR / "ZsRE.json", n=3)
    h0 = state_dict_hash(m)
    before = token_accuracy(m, m.tokenizer, [f.prompt for f in facts], [f.target_new for f in facts])
    with m.edit(facts, method="ultraedit") as e:
        after = token_accuracy(m, m.tokenizer, [f.prompt for f in facts], [f.target_new for f in facts])
        assert state_dict_hash(m) == h0 and e.info["seconds"] < 60
    assert sum(after) / len(after) >= 0.9 and sum(after) > sum(before), (before, after)
    assert state_dict_hash(m) == h0
