"""MEMOIR residual memory: TopHash masks, retrieval by mask overlap, push/pop/remove bit-exactness,
save/load, hyperparameter errors; and the demo edit on the embedded model (slow)."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from editwrap import state_dict_hash
from editwrap.methods.memoir.entry import (MemoirEntry, MemoirMemory, hash_permutation, mean_input, memoir_memories,
                                           tophash)
from editwrap.ops.hooks import capture
from tests.conftest import build_tiny

FACT = {"prompt": "The Eiffel Tower is located in", "target_new": "Rome"}
FACT2 = {"prompt": "The capital of France is", "target_new": "London"}
UNRELATED = "My favourite colour is green and the sky is blue"
#: tiny random models: a strict threshold keeps unrelated texts out of the memory (asserted below)
TINY = dict(n_iter=10, edit_lr=0.5, threshold=0.95, early_stop_loss=0.0)


def _logits(m, text="The Eiffel Tower is located in Rome"):
    ids = m.tokenizer(text, return_tensors="pt").to(m.device)
    with torch.no_grad():
        return m(**ids).logits


def _target_logprob(m, fact=FACT):
    first = m.tokenizer(" " + fact["target_new"], add_special_tokens=False)["input_ids"][0]
    return torch.log_softmax(_logits(m, fact["prompt"])[0, -1], -1)[first].item()


def _overlap(m, e, text):
    mem = memoir_memories(m)[e.entry.module]
    mem.enabled = False
    try:
        with capture(m, [e.entry.module]) as cap, torch.no_grad():
            m(**m.tokenizer(text, return_tensors="pt").to(m.device))
    finally:
        mem.enabled = True
    _, overlap, hit = mem.retrieve(mean_input(cap[e.entry.module]["input"]))
    return float(overlap[0]), bool(hit[0])


def test_tophash_is_deterministic_and_sparse():
    x = torch.randn(3, 40)
    perm = hash_permutation(40, seed=0)
    idx = tophash(x, 8, perm)
    assert idx.shape == (3, 8) and torch.equal(idx, tophash(x, 8, hash_permutation(40, seed=0)))
    for row, cols in zip(x, idx):
        assert len(set(cols.tolist())) == 8 and set(cols.tolist()) == set(perm[row.abs().topk(8).indices].tolist())
    assert not torch.equal(hash_permutation(40, 0), hash_permutation(40, 1))
    assert sorted(perm.tolist()) == list(range(40))


def test_retrieval_picks_the_best_edit_above_its_threshold():
    perm = torch.arange(6)
    mem = MemoirMemory(None)
    mem.add("a", MemoirEntry("m", torch.tensor([0, 1]), torch.ones(2, 2), perm, 0.5))
    mem.add("b", MemoirEntry("m", torch.tensor([2, 3]), 2 * torch.ones(2, 2), perm, 1.0))
    mean = torch.tensor([[5.0, 0, 0, 0, 4, 0],    # overlaps a by 1/2: a
                         [0, 0, 5, 4, 0, 0],      # b fully
                         [0, 0, 5, 0, 0, 4]])     # b by 1/2, below its threshold 1.0: none
    best, overlap, hit = mem.retrieve(mean)
    assert hit.tolist() == [True, True, False] and best[:2].tolist() == [0, 1] and overlap[:2].tolist() == [0.5, 1.0]
    x = mean[:, None, :].repeat(1, 2, 1)
    out = torch.zeros(3, 2, 2)
    y = mem.apply(out, x)
    assert torch.equal(y[0], torch.full((2, 2), 5.0)) and torch.equal(y[1], torch.full((2, 2), 18.0))
    assert torch.equal(y[2], out[2])  # memory off: untouched
    mem.discard("a")
    assert torch.equal(mem.weight[:, :2], torch.zeros(2, 2)) and mem.masks.shape == (1, 6)


def test_edit_raises_target_and_leaves_unrelated_bit_identical(tiny_model):
    m = tiny_model
    before, unrelated = _target_logprob(m), _logits(m, UNRELATED)
    h = state_dict_hash(m)
    e = m.edit(FACT, method="memoir", **TINY)
    d_in = e.entry.perm.numel()
    assert e.entry.idx.numel() == round(0.2 * d_in) < d_in and e.entry.delta.shape[1] == e.entry.idx.numel()
    assert _overlap(m, e, FACT["prompt"]) == (1.0, True)
    assert _target_logprob(m) > before + 0.3  # a random tiny model cannot be pushed far (final norm)
    assert state_dict_hash(m) == h
    overlap, hit = _overlap(m, e, UNRELATED)
    assert not hit and overlap < TINY["threshold"]
    assert torch.equal(_logits(m, UNRELATED), unrelated)  # memory off: the base model, bit for bit
    m.pop()


def test_push_pop_remove_exact_and_save_load(tiny_model, tmp_path, tiny_tokenizer):
    m = tiny_model
    p1, p2 = FACT["prompt"], FACT2["prompt"]
    h, keys, base1, base2 = state_dict_hash(m), list(m.state_dict()), _logits(m, p1), _logits(m, p2)
    e1 = m.edit(FACT, method="memoir", **TINY)
    one1 = _logits(m, p1)
    assert not torch.equal(one1, base1) and torch.equal(_logits(m, p2), base2)
    e2 = m.edit(FACT2, method="memoir", **TINY)
    two1, two2 = _logits(m, p1), _logits(m, p2)
    assert not torch.equal(two2, base2)
    m.stack.save(tmp_path / "s")
    m.pop()
    assert torch.equal(_logits(m, p1), one1) and torch.equal(_logits(m, p2), base2)
    m.pop()
    assert state_dict_hash(m) == h and list(m.state_dict()) == keys and torch.equal(_logits(m, p1), base1)
    assert "_ew_memoir" not in m.__dict__
    fresh = build_tiny(m.config.model_type, tiny_tokenizer)
    fresh.compose(tmp_path / "s")
    assert torch.equal(_logits(fresh, p1), two1) and torch.equal(_logits(fresh, p2), two2)
    with pytest.warns(UserWarning):
        fresh.remove(fresh.stack.edits[0])  # what remains is exactly e2 pushed alone
    alone = build_tiny(m.config.model_type, tiny_tokenizer)
    alone.push(e2)
    for p in (p1, p2):
        assert torch.equal(_logits(fresh, p), _logits(alone, p))
    assert e1.entry.summary().startswith("memoir")


def test_prompt_masks_are_the_masks_memoir_stores_and_routes_with(tiny_model):
    """benchmarks/scope_threshold.py --router memoir chooses a threshold from these masks, without editing."""
    from editwrap.methods.memoir import MemoirHparams, prompt_masks

    m = tiny_model
    e = m.edit(FACT, method="memoir", **TINY)
    hp = MemoirHparams(**e.hparams)
    masks = prompt_masks(m, [FACT["prompt"], UNRELATED, FACT2["prompt"]], hp, batch_size=2)  # padded batch
    k = e.entry.idx.numel()
    assert masks.shape == (3, e.entry.perm.numel()) and masks.sum(1).tolist() == [k] * 3
    assert masks[0].nonzero().squeeze(1).tolist() == e.entry.idx.tolist()  # the edit's stored mask
    overlaps = masks @ masks[0] / k
    assert memoir_memories(m)[e.entry.module].enabled
    for text, got in zip((UNRELATED, FACT2["prompt"]), overlaps[1:].tolist()):
        assert _overlap(m, e, text)[0] == pytest.approx(got)
    m.pop()


def test_padding_does_not_change_retrieval(tiny_llama):
    m = tiny_llama
    m.edit(FACT, method="memoir", **TINY)
    tok = m.tokenizer
    short = FACT["prompt"]
    alone = tok([short], return_tensors="pt")
    batch = tok([short, UNRELATED], return_tensors="pt", padding=True)
    n = alone["input_ids"].shape[1]
    assert batch["attention_mask"][0].sum() == n < batch["input_ids"].shape[1]
    with torch.no_grad():
        a, b = m(**alone).logits[0], m(**batch).logits[0, :n]
    assert torch.allclose(a, b, atol=1e-5)
    m.pop()


@pytest.mark.parametrize("bad, field", [({"mask_ratio": 1.5}, "mask_ratio"), ({"threshold": 0.0}, "threshold"),
                                        ({"n_iter": 0}, "n_iter"), ({"typo_field": 1}, "typo_field")])
def test_bad_hparams_name_the_field(tiny_llama, bad, field):
    h = state_dict_hash(tiny_llama)
    with pytest.raises((ValidationError, ValueError), match=field):
        tiny_llama.edit(FACT, method="memoir", **bad)
    assert state_dict_hash(tiny_llama) == h and len(tiny_llama.stack) == 0 and "_ew_memoir" not in tiny_llama.__dict__


def test_layer_out_of_range_and_batches_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="layer"):
        tiny_llama.edit(FACT, method="memoir", layer=99)
    with pytest.raises(ValueError, match="one fact at a time"):
        tiny_llama.edit([FACT, FACT2], method="memoir")
    assert len(tiny_llama.stack) == 0 and "_ew_memoir" not in tiny_llama.__dict__


def test_entries_with_another_hash_are_refused(tiny_llama):
    m = tiny_llama
    m.edit(FACT, method="memoir", **TINY)
    with pytest.raises(ValueError, match="seed"):
        m.edit(FACT2, method="memoir", seed=1, **TINY)
    assert len(m.stack) == 1
    m.pop()


@pytest.mark.slow
def test_embedded_memoir_edit_answer_and_pop(embedded):
    m = embedded
    fact = {"prompt": "The Eiffel Tower is located in the city of", "target_new": "Rome"}
    other = "The capital of Japan is"
    h = state_dict_hash(m)
    base, base_other = (m.generate_text(p, max_new_tokens=5) for p in (fact["prompt"], other))
    m.edit(fact, method="memoir")
    try:
        assert "Rome" in m.generate_text(fact["prompt"], max_new_tokens=5)
        assert m.generate_text(other, max_new_tokens=5) == base_other
    finally:
        m.pop()
    assert state_dict_hash(m) == h and m.generate_text(fact["prompt"], max_new_tokens=5) == base


def test_generation_keeps_the_prompts_routing_to_the_last_token(tiny_llama):
    """The decision is taken on the prompt and kept by every KV-cached step: the scores equal an
    uncached forward over prompt + answer routed on the prompt (``route_as``), and the memory is
    consulted once per generate call, not once per token."""
    from editwrap.ops.scope import route_as

    m = tiny_llama
    enc = m.tokenizer([FACT["prompt"]], return_tensors="pt")
    kw = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True,
              pad_token_id=m.tokenizer.pad_token_id)
    with torch.no_grad():
        base = m.generate(**enc, **kw).scores
    e = m.edit(FACT, method="memoir", **{**TINY, "threshold": 0.5})
    mem = memoir_memories(m)[e.entry.module]
    calls = []
    retrieve = mem.retrieve
    mem.retrieve = lambda mean: calls.append(mean.shape[0]) or retrieve(mean)
    with torch.no_grad():
        cached = m.generate(**enc, use_cache=True, **kw)
        assert calls == [1]
        with route_as([FACT["prompt"]]):
            full = m(input_ids=cached.sequences).logits[0]
    mem.retrieve = retrieve
    m.pop()
    n = enc["input_ids"].shape[1]
    for i, a in enumerate(cached.scores):
        assert torch.allclose(a[0], full[n - 1 + i], atol=1e-4)
    assert not torch.allclose(cached.scores[0], base[0], atol=1e-4)  # the memory is in play


def test_teacher_forced_scoring_routes_on_the_prompt(tiny_llama):
    """Inside route_as(prompts) a prompt + answer forward takes its mask from the prompt's tokens
    only, the tokens the edit's mask was taken on: the edited prompt overlaps its edit fully."""
    from editwrap.ops.scope import route_as

    m = tiny_llama
    e = m.edit(FACT, method="memoir", **{**TINY, "threshold": 1.0})
    mem = memoir_memories(m)[e.entry.module]
    seen = []
    retrieve = mem.retrieve
    mem.retrieve = lambda mean: seen.append(retrieve(mean)) or seen[-1]  # type: ignore[method-assign]
    texts = [FACT["prompt"] + " " + FACT["target_new"], UNRELATED]
    enc = m.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad(), route_as([FACT["prompt"], UNRELATED]):
        m(**enc)
    mem.retrieve = retrieve
    m.pop()
    _, overlap, hit = seen[0]
    assert hit.tolist() == [True, False] and overlap[0].item() == 1.0
