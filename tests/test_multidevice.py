"""Models spread by accelerate's device_map: a hand-written map that splits the model in two, and
one that offloads half the layers to disk. Edits give the same logits as on the unsplit model,
pop is bit-exact (offloaded weights are hashed from the offload store), stacks save and reload."""
from __future__ import annotations

import pytest
import torch

from editwrap import EditableModel, Fact, state_dict_hash

F = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
EDITS = [("rome", dict(layer=2, v_num_grad_steps=3, mom2_n_tokens=300, context_templates=[(3, 1)])),
         ("memit", dict(layers=[1, 2], v_num_grad_steps=3, mom2_n_tokens=300, context_templates=[(3, 1)])),
         ("ft-m", dict(layers=[3], num_steps=3)),
         ("grace", dict(layer=2, n_iter=5))]


def _map(second: str) -> dict[str, str]:
    """Layers 2-3 on ``second``, the rest on the CPU (the head is tied to the input embeddings, so
    it stays with them)."""
    return {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
            "model.layers.2": second, "model.layers.3": second, "model.norm": "cpu", "lm_head": "cpu"}


def _logits(m):
    enc = m.tokenizer(F.prompt, return_tensors="pt")
    with torch.no_grad():
        return m(**enc).logits.float().cpu()


@pytest.fixture(params=["split", "disk"] + (["cuda"] if torch.cuda.is_available() else []))
def spread(request, tiny_llama_dir, tmp_path):
    second = {"split": "cpu", "disk": "disk", "cuda": "cuda:0"}[request.param]
    kw = {"offload_folder": str(tmp_path / "offload")} if second == "disk" else {}
    m = EditableModel.from_pretrained(str(tiny_llama_dir), device_map=_map(second), **kw)
    if second != "cpu":  # one device in all: transformers keeps no hf_device_map
        assert m.hf_device_map["model.layers.3"] == (0 if second == "cuda:0" else second)
    return m, EditableModel.from_pretrained(str(tiny_llama_dir))


@pytest.mark.parametrize("method,hp", EDITS, ids=[m for m, _ in EDITS])
def test_edit_on_spread_model_equals_unsplit_and_pops_exactly(spread, method, hp):
    m, ref = spread
    h0, base = state_dict_hash(m), _logits(m)
    assert h0 == state_dict_hash(ref)  # offloaded weights hash as their real values
    torch.testing.assert_close(base, _logits(ref))
    ref.edit(F, method=method, **hp)
    m.edit(F, method=method, **hp)
    torch.testing.assert_close(_logits(m), _logits(ref), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_logits(m), base)
    m.pop()
    assert state_dict_hash(m) == h0 and torch.equal(_logits(m), base)


def test_stack_saved_from_unsplit_model_loads_on_spread_model(spread, tmp_path):
    m, ref = spread
    ref.edit(F, method="rome", **EDITS[0][1])
    ref.stack.save(tmp_path / "stack")
    m.compose(tmp_path / "stack")
    torch.testing.assert_close(_logits(m), _logits(ref), rtol=1e-4, atol=1e-4)
    m.clear()


def test_adapter_on_offloaded_layers_is_a_clear_error(tiny_llama_dir, tmp_path):
    m = EditableModel.from_pretrained(str(tiny_llama_dir), device_map=_map("disk"),
                                      offload_folder=str(tmp_path / "offload"))
    h0 = state_dict_hash(m)
    with pytest.raises(ValueError, match="offloaded"):
        m.edit(F, method="lora", layers=[3])
    assert len(m.stack) == 0 and state_dict_hash(m) == h0
