"""IKE / ICE: prompt entries on the text plane (tiny models for logic, embedded model for behaviour)."""
from __future__ import annotations

import json

import pytest
import torch

from editwrap import Fact, state_dict_hash
from editwrap.entries.prompt import ContextOverflowError, PromptEntry
from editwrap.methods.ike.hparams import IkeHparams
from editwrap.methods.ike.method import retrieve

from .conftest import KNOWEDIT_DIR

POOL_ROWS = [
    {"subject": "UniFirst", "src": "What is the product made by UniFirst?", "rephrase": "What does UniFirst make?",
     "alt": "unmanned aircraft", "answers": ["uniform"], "loc": "nq question: who wrote hamlet",
     "loc_ans": "William Shakespeare"},
    {"subject": "Lake Baikal", "src": "Which country is Lake Baikal in?",
     "rephrase": "Lake Baikal lies in which country?",
     "alt": "Canada", "answers": ["Russia"], "loc": "nq question: what is the capital of peru", "loc_ans": "Lima"},
    {"subject": "Danube", "src": "Into which sea does the Danube flow?", "rephrase": "The Danube ends in which sea?",
     "alt": "Baltic Sea", "answers": ["Black Sea"], "loc": "nq question: who painted the mona lisa",
     "loc_ans": "Leonardo da Vinci"},
]
FACT = Fact(prompt="Which country is Mount Fuji in?", target_new="Brazil", rephrase=["Mount Fuji is in which country?"])


@pytest.fixture
def pool(tmp_path):
    p = tmp_path / "pool.json"
    p.write_text(json.dumps(POOL_ROWS))
    return str(p)


def _logits(model, text="The capital of France is"):
    ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_ike_prompt_entry_text_plane_only(tiny_model, pool):
    m = tiny_model
    h0, raw0 = state_dict_hash(m), _logits(m)
    ll0 = m.loglikelihood(FACT.prompt, " Brazil")
    e = m.edit(FACT, method="ike", pool=pool, k=2, answer_budget=2)
    assert isinstance(e.entry, PromptEntry) and len(e.entry.demos) == 2
    ctx = m._prepare_text(FACT.prompt)
    assert ctx.endswith("New Fact: Which country is Mount Fuji in? Brazil\nPrompt: Which country is Mount Fuji in?")
    assert "Lake Baikal" in ctx  # nearest pool record retrieved by MiniLM
    assert m.loglikelihood(FACT.prompt, " Brazil") != ll0
    assert torch.equal(_logits(m), raw0), "a prompt entry must not change raw forward(input_ids)"
    assert isinstance(m.generate_text(FACT.prompt, max_new_tokens=2), str)
    m.pop()
    assert m._prepare_text(FACT.prompt) == FACT.prompt
    assert m.loglikelihood(FACT.prompt, " Brazil") == ll0 and state_dict_hash(m) == h0


def test_demo_kinds_copy_update_retain(pool):
    demos, scores = retrieve([FACT], IkeHparams(pool=pool, k=9))
    assert scores == sorted(scores, reverse=True)
    assert len(demos) == 9  # 3 records x (copy, update, retain)
    assert any("Prompt: Which country is Lake Baikal in? Canada" in d for d in demos)  # copy
    assert any("Prompt: Lake Baikal lies in which country? Canada" in d for d in demos)  # update
    assert any("Prompt: nq question: what is the capital of peru Lima" in d for d in demos)  # retain
    only, _ = retrieve([FACT], IkeHparams(pool=pool, k=9, demo_kinds=["retain"]))
    assert len(only) == 3 and all("nq question" in d for d in only)


def test_exclude_same_prompt(pool):
    f = Fact(prompt="Which country is Lake Baikal in?", target_new="Canada")
    demos, _ = retrieve([f], IkeHparams(pool=pool, k=9))
    assert len(demos) == 6 and not any("New Fact: Which country is Lake Baikal in?" in d for d in demos)


def test_ice_needs_no_pool_and_stacks_compose(tiny_llama):
    m = tiny_llama
    a = m.edit(FACT, method="ice")
    b = m.edit(Fact(prompt="The Danube flows into the", target_new="Baltic Sea"), method="ice")
    assert a.entry.demos == [] and b.entry.demos == []
    ctx = m._prepare_text("Q?")
    assert ctx == ("New Fact: Which country is Mount Fuji in? Brazil\nNew Fact: The Danube flows into the Baltic Sea\n"
                   "Prompt: Q?")
    with pytest.warns(UserWarning, match="computed with it present"):
        m.remove(a)  # prompt entries are order independent
    assert m._prepare_text("Q?") == "New Fact: The Danube flows into the Baltic Sea\nPrompt: Q?"
    m.pop()
    assert m._prepare_text("Q?") == "Q?"


def test_compose_with_weight_entry_pop_exact_and_save_load(tiny_model, pool, tmp_path):
    m = tiny_model
    h0, raw0 = state_dict_hash(m), _logits(m)
    ll0 = m.loglikelihood(FACT.prompt, " Brazil")
    m.edit(Fact(prompt="The Eiffel Tower is located in the city of", target_new="Rome"), method="ft-m", num_steps=2)
    raw_ft = _logits(m)
    m.edit(FACT, method="ike", pool=pool, k=1, answer_budget=2)
    ll_both = m.loglikelihood(FACT.prompt, " Brazil")
    ctx = m._prepare_text(FACT.prompt)
    assert torch.equal(_logits(m), raw_ft)
    m.stack.save(tmp_path / "stack")
    m.clear()
    assert state_dict_hash(m) == h0 and torch.equal(_logits(m), raw0) and m.loglikelihood(FACT.prompt, " Brazil") == ll0
    edits = m.compose(tmp_path / "stack")
    assert [e.method for e in edits] == ["ft-m", "ike"]
    assert m._prepare_text(FACT.prompt) == ctx
    assert m.loglikelihood(FACT.prompt, " Brazil") == pytest.approx(ll_both, abs=1e-5)
    m.pop()
    assert torch.equal(_logits(m), raw_ft)
    m.pop()
    assert state_dict_hash(m) == h0


def test_demonstrations_exceeding_context_window_error(tiny_llama, pool):
    m = tiny_llama  # 256-token window
    long_rows = [dict(r, src=r["src"] + " " + "and also " * 30) for r in POOL_ROWS]
    p = pool.replace("pool.json", "long.json")
    open(p, "w").write(json.dumps(long_rows))
    with pytest.raises(ContextOverflowError, match="context window is 256 tokens.*never truncates"):
        m.edit(FACT, method="ike", pool=p, k=6)
    assert len(m.stack) == 0
    # an entry built elsewhere (e.g. loaded for a bigger model) is refused at push
    with pytest.raises(ContextOverflowError):
        m.push(m.compute_edit(FACT, method="ice").__class__("ike", [FACT], {}, PromptEntry(["x"], ["word " * 300])))
    assert len(m.stack) == 0
    # stacking prompt entries until the combined context overflows: rewriting refuses
    m.edit(FACT, method="ike", pool=pool, k=1, answer_budget=0)
    m.edit(FACT, method="ike", pool=pool, k=1, answer_budget=0, on_conflict="stack")
    with pytest.raises(ContextOverflowError):
        m.generate_text("word " * 60, max_new_tokens=1)
    m.clear()


def test_bad_inputs(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="pool of training records"):
        tiny_llama.edit(FACT, method="ike", pool=None, k=4)
    with pytest.raises(FileNotFoundError):
        tiny_llama.edit(FACT, method="ike", pool=str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="bad hyperparameters"):
        tiny_llama.edit(FACT, method="ike", k=-1)
    with pytest.raises(ValueError):
        PromptEntry([])
    assert len(tiny_llama.stack) == 0


@pytest.mark.slow
def test_ike_embedded_zsre(embedded):
    from editwrap.evals.datasets import load_dataset
    from editwrap.evals.metrics import token_accuracy

    facts = load_dataset("zsre", KNOWEDIT_DIR / "ZsRE.json", n=3)
    pool = str(KNOWEDIT_DIR / "zsre_mend_train.json")
    tok = embedded.tokenizer
    pre = [token_accuracy(embedded, tok, [f.prompt], [f.target_new])[0] for f in facts]
    post = []
    for f in facts:
        with embedded.edit(f, method="ike", pool=pool, k=8):
            post.append(token_accuracy(embedded, tok, [embedded._prepare_text(f.prompt)], [f.target_new])[0])
    assert sum(post) / 3 > sum(pre) / 3 + 0.3, (pre, post)
    assert len(embedded.stack) == 0


def test_ike_prompt_entries_per_edit_set(tiny_llama, pool):
    m = tiny_llama
    m.edit(FACT, method="ike", pool=pool, k=1, answer_budget=2, edit_set="a")
    other = Fact(prompt="Which country is Mount Fuji in?", target_new="Chile")
    m.edit(other, method="ike", pool=pool, k=1, answer_budget=2, edit_set="b")
    with m.using("a"):
        assert m._prepare_text(FACT.prompt).endswith("in? Brazil\nPrompt: Which country is Mount Fuji in?")
        assert "Chile" not in m._prepare_text(FACT.prompt)
    with m.using("b"):
        assert "Brazil" not in m._prepare_text(FACT.prompt)
    with m.using():
        assert m._prepare_text(FACT.prompt) == FACT.prompt
    texts = m.generate_text([FACT.prompt] * 3, max_new_tokens=2, edit_sets=[["a"], ["b"], []])
    for sets, text in zip((["a"], ["b"], []), texts):
        with m.using(*sets):
            assert m.generate_text(FACT.prompt, max_new_tokens=2) == text
    m.clear()
