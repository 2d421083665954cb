"""MELO dynamic LoRA blocks: routing, push/pop bit-exactness, two blocks, save/load, bad hparams."""
from __future__ import annotations

import pytest
import torch

from editwrap import state_dict_hash
from editwrap.methods.melo.entry import MeloEntry, MeloRouter
from editwrap.ops.tokens import target_ids

FACT = {"prompt": "The Eiffel Tower is located in", "target_new": "Rome"}
FACT2 = {"prompt": "The capital of France is", "target_new": "London"}
OTHER = "Apple Microsoft Google"
FAST = dict(num_steps=30, lr=5e-2)


def _logits(m, text: str) -> torch.Tensor:
    with torch.no_grad():
        return m(**m.tokenizer(text, return_tensors="pt")).logits


def _top(m, fact) -> bool:
    return int(_logits(m, fact["prompt"])[0, -1].argmax()) == target_ids(m.tokenizer, fact["target_new"])[0]


def test_router_is_causal_sticky_and_nearest_wins():
    r = MeloRouter(None, "x", "last")  # type: ignore[arg-type]
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.0]])
    r.entries = {"a": MeloEntry("x", "last", keys[:2], torch.tensor([0.2, 0.2]), {}, 1.0),
                 "b": MeloEntry("x", "last", keys[2:], torch.tensor([0.5]), {}, 1.0)}
    x = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [5.0, 5.0], [0.0, 1.05], [0.85, 0.0], [7.0, 7.0]]])
    # nothing before the first hit; a hit stays active until the next one; overlapping keys: nearest wins
    assert r.route(x).tolist() == [[-1, 0, 0, 0, 1, 1]]


def test_after_target_kl_keeps_what_follows_the_answer(tiny_llama):
    """Trained with the KL on the unedited model's continuation, the block changes the next-token
    distribution after "prompt + target" less than with the target NLL alone; the target still wins."""
    m = tiny_llama
    text = FACT["prompt"] + m.tokenizer.decode(target_ids(m.tokenizer, FACT["target_new"]))
    ref = torch.log_softmax(_logits(m, text)[0, -1], -1)
    drift = {}
    for kl in (0.0, 1.0):
        e = m.edit(FACT, method="melo", after_target_kl=kl, **FAST)
        assert _top(m, FACT) and ("after_kl" in e.info) == (kl > 0)
        got = torch.log_softmax(_logits(m, text)[0, -1], -1)
        drift[kl] = float(torch.nn.functional.kl_div(got, ref, log_target=True, reduction="sum"))
        m.pop()
    assert drift[1.0] < drift[0.0] / 2, drift


def test_edit_routes_unrelated_to_base_and_pop_is_exact(tiny_model):
    m = tiny_model
    h, keys, base, other = state_dict_hash(m), list(m.state_dict()), _logits(m, FACT["prompt"]), _logits(m, OTHER)
    assert not _top(m, FACT)
    e = m.edit(FACT, method="melo", **FAST)
    assert isinstance(e.entry, MeloEntry) and e.entry.keys.shape[0] == 1
    assert _top(m, FACT), "edited prompt now predicts the target's first token"
    assert torch.equal(_logits(m, OTHER), other), "a prompt far from the key runs the base model"
    assert state_dict_hash(m) == h and list(m.state_dict()) == keys, "no weight written"
    m.pop()
    assert state_dict_hash(m) == h and torch.equal(_logits(m, FACT["prompt"]), base)
    assert "_ew_melo" not in m.__dict__ and not m._forward_hooks and not m._forward_pre_hooks


def test_two_blocks_each_routed_removal_from_middle_and_save_load(tiny_llama, tiny_tokenizer, tmp_path):
    from tests.conftest import build_tiny

    m = tiny_llama
    base1, base2 = _logits(m, FACT["prompt"]), _logits(m, FACT2["prompt"])
    e1 = m.edit(FACT, method="melo", **FAST)
    l1 = _logits(m, FACT["prompt"])
    e2 = m.edit(FACT2, method="melo", **FAST)
    assert e2.depends_on == [e1.id]
    assert _top(m, FACT) and _top(m, FACT2)
    assert torch.equal(_logits(m, FACT["prompt"]), l1), "block 2 does not act on fact 1's prompt"
    router = m.__dict__["_ew_melo"][e1.entry.router]
    m(**m.tokenizer(FACT2["prompt"], return_tensors="pt"))
    assert router._carry is not None and int(router._carry[1][0]) == 1, "fact 2's prompt ends routed to block 2"
    l12 = (_logits(m, FACT["prompt"]), _logits(m, FACT2["prompt"]))
    m.stack.save(tmp_path / "s")
    fresh = build_tiny("llama", tiny_tokenizer)
    fresh.compose(tmp_path / "s")
    assert [e.method for e in fresh.stack] == ["melo", "melo"]
    assert torch.equal(_logits(fresh, FACT["prompt"]), l12[0]) and torch.equal(_logits(fresh, FACT2["prompt"]), l12[1])
    with pytest.warns(UserWarning, match="computed with it present"):
        m.remove(e1)  # blocks are independent: removing from the middle is allowed
    assert torch.equal(_logits(m, FACT["prompt"]), base1) and torch.equal(_logits(m, FACT2["prompt"]), l12[1])
    m.pop()
    assert torch.equal(_logits(m, FACT2["prompt"]), base2) and "_ew_melo" not in m.__dict__


def test_generation_with_kv_cache_keeps_the_block(tiny_llama):
    m = tiny_llama
    with m.edit(FACT, method="melo", **FAST):
        # the router reads mask and cache on the backbone: the host stays hook-free (ops.values.logits_at)
        assert not m._forward_hooks and not m._forward_pre_hooks
        cached = m.generate_text(FACT["prompt"], max_new_tokens=4)
        full = m.generate_text(FACT["prompt"], max_new_tokens=4, use_cache=False)
        assert cached == full and cached.strip().startswith(FACT["target_new"][:1])


@pytest.mark.parametrize("bad,match", [({"rank": 0}, "rank"), ({"target_modules": ["mlp.nope"]}, "target_modules"),
                                       ({"layers": [0]}, "layers"), ({"router_layer": 99}, "router_layer"),
                                       ({"key_type": "max"}, "key_type"), ({"radius": -1}, "radius")])
def test_bad_hparams_name_the_field_and_leave_model_untouched(tiny_llama, bad, match):
    m = tiny_llama
    h, ref = state_dict_hash(m), _logits(m, FACT["prompt"])
    with pytest.raises(ValueError, match=match):
        m.edit(FACT, method="melo", **bad)
    assert state_dict_hash(m) == h and torch.equal(_logits(m, FACT["prompt"]), ref) and not m.stack.edits
    assert "_ew_melo" not in m.__dict__ and not m._forward_hooks and not m._forward_pre_hooks


@pytest.mark.slow
def test_embedded_melo_edit_and_pop(embedded):
    from editwrap.evals.metrics import token_accuracy

    m = embedded
    fact = {"prompt": "Which family does Epaspidoceras belong to?", "target_new": "Noctuidae"}
    h = state_dict_hash(m)
    before = m.generate_text(fact["prompt"], max_new_tokens=5)
    control = m.generate_text("The capital of France is", max_new_tokens=3)
    assert "Noct" not in before
    m.edit(fact, method="melo")
    try:
        after = m.generate_text(fact["prompt"], max_new_tokens=5)
        print(f"MELO embedded: {before!r} -> {after!r}")
        assert "Noctuidae" in after
        assert token_accuracy(m, m.tokenizer, [fact["prompt"]], [fact["target_new"]])[0] == 1.0
        assert m.generate_text("The capital of France is", max_new_tokens=3) == control, "unrelated prompt unchanged"
    finally:
        m.pop()
    assert state_dict_hash(m) == h and m.generate_text(fact["prompt"], max_new_tokens=5) == before


@pytest.mark.slow
def test_embedded_melo_answer_does_not_repeat(embedded):
    """The block stays on for every generated token; the KL after the target keeps it from saying
    the target again there (EasyEdit's loss alone: "Rome Rome Rome Rome")."""
    m = embedded
    prompt = "The Eiffel Tower is located in the city of"
    h = state_dict_hash(m)
    before = m.generate_text(prompt, max_new_tokens=8)
    answers = {}
    for kl in (0.0, 1.0):
        with m.edit({"prompt": prompt, "target_new": "Rome"}, method="melo", after_target_kl=kl):
            answers[kl] = m.generate_text(prompt, max_new_tokens=8)
    assert answers[0.0].count("Rome") >= 3, answers  # the failure this guards against, reproduced
    assert answers[1.0].strip().startswith("Rome") and answers[1.0].count("Rome") == 1, answers
    assert state_dict_hash(m) == h and m.generate_text(prompt, max_new_tokens=8) == before
