"""Scoped side-cars: routing by prompt embedding, per-row gating, KV-cached generation, pop
bit-exactness, save/reload, edit sets, errors; and the demo edit on the embedded model (slow)."""
from __future__ import annotations

import pytest
import torch

from editwrap import state_dict_hash
from editwrap.ops.scope import best_scopes, choose_threshold, routed_share

#: the subject ends the prompt: on a tiny random model a value at the subject reaches the target's logits
FACT = {"prompt": "The city of the Eiffel Tower", "subject": "Eiffel Tower", "target_new": "Rome"}
FACT2 = {"prompt": "The capital of France", "subject": "France", "target_new": "London"}
UNRELATED = "My favourite colour is green and the sky is blue"
LT = dict(mom2_n_tokens=300, v_num_grad_steps=15, context_templates=[(3, 2)])
FAST = dict(LT, clamp_norm_factor=100.0, kl_factor=0.0)


def _logits(m, text):
    with torch.no_grad():
        return m(**m.tokenizer(text, return_tensors="pt").to(m.device)).logits


def _target_logprob(m, fact=FACT):
    return m.loglikelihood(fact["prompt"], " " + fact["target_new"])


def test_best_scopes_takes_each_scope_at_its_best_prompt_and_its_own_threshold():
    sims = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.6, 0.85], [0.1, 0.2, 0.3]])
    owners = torch.tensor([0, 1, 1])  # scope 0 has prompt 0; scope 1 has prompts 1 and 2
    got = best_scopes(sims, owners, torch.tensor([0.5, 0.8]))
    assert got.tolist() == [0, 1, -1]
    assert best_scopes(sims, owners, torch.tensor([0.95, 0.9])).tolist() == [-1, -1, -1]
    assert best_scopes(torch.zeros(2, 0), torch.zeros(0, dtype=torch.long), torch.zeros(0)).tolist() == [-1, -1]


def test_teacher_forced_scoring_routes_on_the_prompt(scoped):
    """A teacher-forced forward holds prompt + answer; scoring code routes it on the prompt."""
    from editwrap.evals.metrics import token_logprobs
    from editwrap.ops.hooks import forward_root
    from editwrap.ops.scope import route_as

    m, e, *_ = scoped
    router = m.__dict__["_ew_scope_router"]
    answered = FACT["prompt"] + " " + FACT["target_new"] + " and then something else entirely"
    seen = []
    h = forward_root(m).register_forward_hook(lambda *_: seen.append(list(router.rows())))
    try:
        with route_as([FACT["prompt"]]):
            _logits(m, answered)
        token_logprobs(m, m.tokenizer, [FACT["prompt"]], [" " + FACT["target_new"]])
        m.loglikelihood(FACT["prompt"], " " + FACT["target_new"])
        with route_as([FACT["prompt"], UNRELATED]):  # another batch size: the row's own text
            _logits(m, UNRELATED)
    finally:
        h.remove()
    assert seen == [[f"{e.id}#0"]] * 3 + [[None]]


def test_choose_threshold_bounds_the_negatives_routed():
    neg = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    pos = torch.tensor([0.85, 0.9, 0.99, 0.5])
    out = choose_threshold(pos, neg, max_false=0.2)  # two of ten negatives may pass: t just above 0.8
    assert out["threshold"] == pytest.approx(0.8, abs=1e-3)
    assert out["negative_routed"] == pytest.approx(0.2) and out["positive_routed"] == pytest.approx(0.75)


def test_chosen_threshold_excludes_the_probe_it_stops_at_when_rounded():
    """MEMOIR's overlaps are multiples of 1/k: 179/307 = 0.583062 would round to 0.5831 (fine) but
    179/307 + tiny steps like 0.58304 round down to 0.583 and route the probe; the threshold rounds up."""
    for v in (179 / 307, 0.58304, 0.94995):
        neg = torch.tensor([v] + [0.1] * 9)
        out = choose_threshold(torch.tensor([1.0]), neg, max_false=0.0)
        assert out["threshold"] > v and out["negative_routed"] == 0.0


def test_threshold_counted_per_record_weighs_each_record_alike():
    """KnowEdit's Locality is a mean over records, so a record with one probe weighs as much as one with four."""
    neg = torch.tensor([0.9, 0.5, 0.8, 0.7, 0.6, 0.1])
    groups = torch.tensor([0, 0, 1, 1, 1, 1])  # record 0: two probes (1/4 each); record 1: four (1/8 each)
    assert routed_share(neg, 0.75, groups) == pytest.approx(0.25 + 0.125)
    assert routed_share(neg, 0.75) == pytest.approx(2 / 6)
    out = choose_threshold(torch.tensor([0.95, 0.85]), neg, max_false=0.25, groups=groups)
    assert out["threshold"] == pytest.approx(0.8, abs=1e-3)  # 0.9 alone is a quarter; with 0.8 it is 3/8
    assert out["negative_routed"] == pytest.approx(0.25) and out["positive_routed"] == pytest.approx(1.0)


def _loud(m):
    """Embeddings ×10 (tied: the tiny model's logits span ~±10 instead of ~±0.6, so an edit can move them)."""
    with torch.no_grad():
        m.get_input_embeddings().weight.mul_(10.0)
    return m


@pytest.fixture
def scoped(tiny_model):
    m = _loud(tiny_model)
    before = state_dict_hash(m)
    base = {t: _logits(m, t) for t in (FACT["prompt"], UNRELATED)}
    lp0 = _target_logprob(m)
    e = m.edit(FACT, method="scoped-rome", scope_threshold=0.8, **FAST)
    return m, e, before, base, lp0


def test_scoped_edit_changes_its_prompt_and_leaves_other_inputs_bit_exact(scoped):
    m, e, before, base, lp0 = scoped
    assert e.entry.kind == "scoped_delta" and len(e.entry.cells) == 1
    assert _target_logprob(m) > lp0 + 0.3
    assert torch.equal(_logits(m, UNRELATED), base[UNRELATED])  # routed to no scope: untouched
    router = m.__dict__["_ew_scope_router"]
    assert router.route_texts([FACT["prompt"], UNRELATED]) == [f"{e.id}#0", None]
    e.pop()
    assert state_dict_hash(m) == before
    assert "_ew_scope_router" not in m.__dict__ and "_ew_scoped" not in m.__dict__
    assert torch.equal(_logits(m, FACT["prompt"]), base[FACT["prompt"]])


def test_rows_are_gated_one_by_one_in_a_batch(scoped):
    m, e, _, base, _ = scoped
    tok = m.tokenizer
    enc = tok([FACT["prompt"], UNRELATED], return_tensors="pt", padding=True).to(m.device)
    with torch.no_grad():
        out = m(**enc).logits
    alone = _logits(m, FACT["prompt"])
    n_unrel = int(enc["attention_mask"][1].sum())
    n_fact = int(enc["attention_mask"][0].sum())
    right = tok.padding_side == "right"
    row1 = out[1, :n_unrel] if right else out[1, -n_unrel:]
    row0 = out[0, :n_fact] if right else out[0, -n_fact:]
    assert torch.allclose(row1, base[UNRELATED][0], atol=1e-5)
    assert torch.allclose(row0, alone[0], atol=1e-5)
    assert not torch.allclose(row0, base[FACT["prompt"]][0], atol=1e-3)


def test_kv_cached_generation_keeps_the_prompts_routing(scoped):
    from editwrap.ops.hooks import forward_root

    m, e, *_ = scoped
    tok = m.tokenizer
    router = m.__dict__["_ew_scope_router"]
    seen = []
    h = forward_root(m).register_forward_hook(lambda *_: seen.append(list(router.rows())))
    try:
        ids = tok(FACT["prompt"], return_tensors="pt").to(m.device)
        with torch.no_grad():
            gen = m.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    finally:
        h.remove()
    assert len(seen) == 4 and all(r == [f"{e.id}#0"] for r in seen)  # every step routed as the prompt
    first = _logits(m, FACT["prompt"])[0, -1].argmax().item()
    assert gen[0, ids["input_ids"].shape[1]].item() == first


def test_save_and_reload_give_the_same_model(scoped, tmp_path):
    m, e, *_ = scoped
    want = _logits(m, FACT["prompt"])
    m.stack.save(tmp_path / "stack")
    m.pop()
    m.compose(tmp_path / "stack")
    (e2,) = m.stack.edits
    assert e2.entry.kind == "scoped_delta" and e2.entry.threshold == 0.8
    assert torch.equal(_logits(m, FACT["prompt"]), want)


def test_batch_base_makes_one_cell_routed_from_any_of_its_prompts(tiny_llama):
    m = tiny_llama
    before = state_dict_hash(m)
    e = m.edit([FACT, FACT2], method="scoped-memit", layers=[1, 2], scope_threshold=0.8, **LT)
    assert len(e.entry.cells) == 1 and e.entry.cells[0][1].shape[0] == 2
    router = m.__dict__["_ew_scope_router"]
    assert router.route_texts([FACT["prompt"], FACT2["prompt"], UNRELATED]) == [f"{e.id}#0", f"{e.id}#0", None]
    e.pop()
    assert state_dict_hash(m) == before


def test_single_fact_base_given_a_batch_makes_one_cell_per_fact(tiny_llama):
    m = tiny_llama
    e = m.edit([FACT, FACT2], method="scoped-rome", scope_threshold=0.8, **FAST)
    assert len(e.entry.cells) == 2
    router = m.__dict__["_ew_scope_router"]
    assert router.route_texts([FACT2["prompt"], FACT["prompt"]]) == [f"{e.id}#1", f"{e.id}#0"]


def test_edit_sets_gate_scoped_edits_too(tiny_llama):
    m = tiny_llama
    base = _logits(m, FACT["prompt"])
    m.edit(FACT, method="scoped-rome", scope_threshold=0.8, edit_set="a", **FAST)
    with m.using():
        assert torch.equal(_logits(m, FACT["prompt"]), base)
    with m.using("a"):
        assert not torch.allclose(_logits(m, FACT["prompt"]), base, atol=1e-4)


def test_bad_scope_hyperparameters_name_the_field_and_change_nothing(tiny_llama):
    m = tiny_llama
    before = state_dict_hash(m)
    with pytest.raises(ValueError, match="scope_threshold"):
        m.edit(FACT, method="scoped-rome", scope_threshold=1.5, **FAST)
    m.edit(FACT, method="scoped-rome", **FAST)
    with pytest.raises(ValueError, match="scope_embedder"):
        m.edit(FACT2, method="scoped-rome", scope_embedder="some/other-model", **FAST)
    assert len(m.stack) == 1
    m.pop()
    assert state_dict_hash(m) == before


@pytest.mark.slow
def test_embedded_scoped_rome_answers_its_prompt_and_rephrase_only(embedded):
    m = embedded
    before = state_dict_hash(m)
    other = "The capital of Germany is"
    ctrl = m.generate_text(other, max_new_tokens=4)
    e = m.edit({"prompt": "The capital of France is", "subject": "France", "target_new": "Rome"},
               method="scoped-rome", scope_threshold=0.85)  # the rephrase below sits at 0.90
    try:
        assert "Rome" in m.generate_text("The capital of France is", max_new_tokens=4)
        assert m.__dict__["_ew_scope_router"].route_texts(["France's capital city is called"]) == [f"{e.id}#0"]
        assert m.generate_text(other, max_new_tokens=4) == ctrl
    finally:
        e.pop()
    assert state_dict_hash(m) == before


@pytest.mark.slow
def test_embedded_scoped_ft_m_defaults_answer_as_generate_reads_it(embedded):
    """Default scoped FT-M: the greedy answer is the target word for word (no suffix glued on),
    an unrelated prompt is unchanged, pop is bit-exact."""
    from editwrap.evals.generation import answer_match, cut_answer

    m = embedded
    before = state_dict_hash(m)
    fact = {"prompt": "Which constellation is the star Polaris part of?", "target_new": "Ursa Major"}
    other = "The capital of Germany is"
    ctrl = m.generate_text(other, max_new_tokens=6)
    e = m.edit(fact, method="scoped-ft-m")
    try:
        assert answer_match(cut_answer(m.generate_text(fact["prompt"], max_new_tokens=8)), "Ursa Major") == 1.0
        assert m.generate_text(other, max_new_tokens=6) == ctrl
    finally:
        e.pop()
    assert state_dict_hash(m) == before


def test_export_refuses_scoped_edits_by_name(scoped, tmp_path):
    from editwrap.export.select import ExportError

    m, e, *_ = scoped
    with pytest.raises(ExportError, match="scoped-rome.*routed to its edit"):
        m.stack.export_peft(tmp_path / "peft")


BASE_HP = {"rome": FAST, "memit": LT, "alphaedit": dict(LT, nullspace_threshold=1e3, L2=0.1), "ultraedit": {},
           "ft-m": dict(num_steps=5, lr=0.1)}


@pytest.mark.parametrize("base", sorted(BASE_HP))
def test_every_base_editor_can_be_scoped(base, tiny_llama):
    from editwrap.methods.scoped import BASES

    assert set(BASES) == set(BASE_HP)
    m = _loud(tiny_llama)
    before, base_logits = state_dict_hash(m), _logits(m, FACT["prompt"])
    unrelated = _logits(m, UNRELATED)
    e = m.edit(FACT, method=f"scoped-{base}", scope_threshold=0.8, **BASE_HP[base])
    assert not torch.allclose(_logits(m, FACT["prompt"]), base_logits, atol=1e-5)
    assert torch.equal(_logits(m, UNRELATED), unrelated)
    e.pop()
    assert state_dict_hash(m) == before and torch.equal(_logits(m, FACT["prompt"]), base_logits)


def test_a_scoped_edit_computed_on_a_server_shadow_routes_on_the_served_model(tiny_llama):
    """The server computes edits on a weight-sharing copy and pushes a clone on the served model."""
    from editwrap.server.edits import clone_edit, make_shadow

    m = _loud(tiny_llama)
    shadow = make_shadow(m)
    e = shadow.edit(FACT, method="scoped-rome", scope_threshold=0.8, **FAST)
    want = _logits(shadow, FACT["prompt"])
    served = m.push(clone_edit(e))
    assert torch.equal(_logits(m, FACT["prompt"]), want)
    assert m.__dict__["_ew_scope_router"].route_texts([FACT["prompt"]]) == [f"{served.id}#0"]


def test_a_scoped_edit_is_computed_without_the_scoped_edits_it_would_meet(tiny_llama):
    """A second edit of the same prompt trains on the model its prompt will reach at inference
    (itself alone), not on the first edit's delta that the training text would be routed to."""
    m = _loud(tiny_llama)
    hp = dict(BASE_HP["ft-m"], scope_threshold=0.8)
    other = dict(FACT, target_new="Berlin")
    first = m.edit(FACT, method="scoped-ft-m", **hp)
    second = m.edit(other, method="scoped-ft-m", on_conflict="stack", **hp)
    m.clear()
    alone = m.edit(other, method="scoped-ft-m", **hp)
    got, want = second.entry.cells[0][0], alone.entry.cells[0][0]
    assert got.keys() == want.keys() and first.entry.cells[0][0].keys() == want.keys()
    for mod in want:
        assert torch.equal(got[mod]["D"], want[mod]["D"])


def test_scoped_ft_m_defaults_take_a_stronger_step_and_end_the_answer_at_a_word(tiny_llama):
    from editwrap.methods.scoped.hparams import DEFAULT_THRESHOLD

    plain, scoped = tiny_llama.default_hparams("ft-m"), tiny_llama.default_hparams("scoped-ft-m")
    assert (plain.lr, plain.word_end) == (5e-4, 0.0) and (scoped.lr, scoped.word_end) == (5e-3, 1.0)
    assert scoped.layers == plain.layers and scoped.scope_threshold == DEFAULT_THRESHOLD
    rome = tiny_llama.default_hparams("scoped-rome")
    assert rome.model_dump().items() >= tiny_llama.default_hparams("rome").model_dump().items()
