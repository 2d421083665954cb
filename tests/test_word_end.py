"""FT-M's ``word_end`` term: the token after the answer should start a new word, so that greedy
``generate`` does not glue a suffix onto the edited answer ("Ursa Major" read as "Ursa Majoris")."""
from __future__ import annotations

import math

import pytest
import torch

from editwrap import Fact
from editwrap.ops.exact import exact_paths
from editwrap.ops.train import answer_ends, edit_batch, glue_ids, word_end_loss

FACTS = [Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome"),
         Fact(prompt="The capital of France is", subject="France", target_new="London Berlin")]


def test_glue_tokens_are_those_that_continue_a_word(tiny_tokenizer):
    glue = set(glue_ids(tiny_tokenizer).tolist())
    pieces = tiny_tokenizer.convert_ids_to_tokens(list(range(len(tiny_tokenizer))))
    assert glue and len(glue) < len(pieces)
    for i, p in enumerate(pieces):  # byte-level BPE writes space/control bytes as U+0100-U+0143 ("Ġ")
        assert (i in glue) == (p[:1].isalnum() and not 0x100 <= ord(p[0]) <= 0x143), p
    ids = tiny_tokenizer.convert_tokens_to_ids
    assert ids("Ġthe") not in glue and ids("Ċ") not in glue and ids("in") in glue and ids("s") in glue
    assert glue_ids(tiny_tokenizer) is glue_ids(tiny_tokenizer)  # computed once per tokenizer


def test_word_end_loss_is_minus_log_of_the_new_word_probability():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    glue = torch.tensor([1, 3])
    p = torch.softmax(logits, -1)
    want = -(math.log(1 - float(p[0, 1] + p[0, 3])) + math.log(1 - float(p[1, 1] + p[1, 3]))) / 2
    assert float(word_end_loss(logits, glue)) == pytest.approx(want, rel=1e-6)
    assert float(word_end_loss(logits[:0], glue)) == 0.0


def test_answer_ends_are_the_last_answer_tokens_and_skip_punctuation(tiny_llama):
    tok = tiny_llama.tokenizer
    facts = [*FACTS, Fact(prompt="The motto is", subject="motto", target_new="Liberty!")]
    _, labels = edit_batch(tiny_llama, facts)
    rows, cols = answer_ends(tok, labels)
    assert rows.tolist() == [0, 1]  # "Liberty!" ends in punctuation: nothing can be glued to it
    for r, c in zip(rows.tolist(), cols.tolist()):
        assert labels[r, c] != -100 and (c + 1 == labels.shape[1] or labels[r, c + 1] == -100)
        assert tok.decode([int(labels[r, c])]).strip()[-1:] == facts[r].target_new[-1]


def test_word_end_fast_path_equals_the_plain_path(tiny_model):
    kw = dict(num_steps=5, lr=5e-3, early_stop_loss=0.0, layers=[2], word_end=1.0)
    with exact_paths(fast_path=False):
        plain = tiny_model.compute_edit(FACTS, method="ft-m", **kw)
    fast = tiny_model.compute_edit(FACTS, method="ft-m", **kw)
    for mod, part in plain.entry.parts.items():
        torch.testing.assert_close(fast.entry.parts[mod]["D"], part["D"], rtol=1e-4, atol=1e-6)
    assert fast.info["word_end"] == pytest.approx(plain.info["word_end"], rel=1e-4)
    assert fast.info["loss"] == pytest.approx(fast.info["nll"] + fast.info["word_end"], abs=1e-4)


def _glue_after_answer(m, fact):
    enc, labels = edit_batch(m, [fact])
    rows, cols = answer_ends(m.tokenizer, labels)
    with torch.no_grad():
        p = torch.softmax(m(**enc).logits[rows, cols].float(), -1)
    return float(p[:, glue_ids(m.tokenizer)].sum())


def test_word_end_makes_the_answer_end_a_word(tiny_model):
    m = tiny_model
    with torch.no_grad():  # embeddings x10: the tiny model's logits span ~±10, so an edit can move them
        m.get_input_embeddings().weight.mul_(10.0)
    fact = FACTS[1]
    kw = dict(num_steps=30, lr=5e-2, early_stop_loss=0.0, layers=[2])
    m.edit(fact, method="ft-m", **kw)
    glued = _glue_after_answer(m, fact)
    m.pop()
    m.edit(fact, method="ft-m", word_end=1.0, **kw)
    assert _glue_after_answer(m, fact) < 0.7 * glued


def test_word_end_is_refused_for_ft_l_naming_the_field(tiny_model):
    with pytest.raises(Exception, match="word_end"):
        tiny_model.edit(FACTS[0], method="ft-l", word_end=1.0)
    assert len(tiny_model.stack) == 0

