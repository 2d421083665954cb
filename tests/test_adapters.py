"""LoRA / AdaLoRA adapter entries (trained with PEFT, applied as side-cars, saved in PEFT format)."""
from __future__ import annotations

import pytest
import torch

from editwrap import state_dict_hash
from editwrap.entries.adapter import AdapterEntry

FACT = {"prompt": "The Eiffel Tower is located in", "target_new": "Rome"}
FACT2 = {"prompt": "The capital of France is", "target_new": "Berlin"}
FAST = dict(num_steps=3, lr=5e-2)


def _logits(m, text="The Eiffel Tower is located in the city of"):
    ids = m.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return m(**ids).logits


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_push_pop_bit_exact_and_tree_unchanged(tiny_model, method):
    m = tiny_model
    h, keys, base = state_dict_hash(m), list(m.state_dict()), _logits(m)
    mods = [n for n, _ in m.named_modules()]
    e = m.edit(FACT, method=method, **FAST)
    assert isinstance(e.entry, AdapterEntry)
    assert state_dict_hash(m) == h and list(m.state_dict()) == keys  # applied as side-cars
    assert [n for n, _ in m.named_modules()] == mods and not hasattr(m, "peft_config")
    assert not torch.equal(_logits(m), base)
    m.pop()
    assert state_dict_hash(m) == h and torch.equal(_logits(m), base) and not m._sidecars


def test_adapter_matches_peft_forward(tiny_llama):
    """The side-car output equals PEFT's own LoraLayer output for the same weights."""
    from peft import PeftModel

    m = tiny_llama
    e = m.compute_edit(FACT, method="lora", **FAST)
    ref = _logits(m)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        e.entry.save_extra(__import__("pathlib").Path(d))
        m.push(e)
        ours = _logits(m)
        m.pop()
        pm = PeftModel.from_pretrained(m, d)
        theirs = _logits(pm)
        pm.unload()
    assert not torch.equal(ours, ref)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_adalora_peft_roundtrip(tiny_model, tmp_path):
    from peft import PeftModel

    m = tiny_model
    m.edit(FACT, method="adalora", **FAST)
    ours = _logits(m)
    m.stack.save(tmp_path / "s")
    m.pop()
    d = tmp_path / "s" / "entry-0"
    assert (d / "adapter_config.json").exists() and (d / "adapter_model.safetensors").exists()
    pm = PeftModel.from_pretrained(m, str(d))
    torch.testing.assert_close(_logits(pm), ours, rtol=1e-4, atol=1e-5)
    pm.unload()
    # and back from PEFT's directory into an entry
    m.push(__import__("editwrap.stack", fromlist=["Edit"]).Edit("adalora", [], {}, AdapterEntry.from_peft_dir(d)))
    torch.testing.assert_close(_logits(m), ours, rtol=1e-5, atol=1e-6)
    m.pop()


def test_several_adapters_remove_middle_save_load(tiny_llama, tmp_path):
    m = tiny_llama
    h, base = state_dict_hash(m), _logits(m)
    e1 = m.edit(FACT, method="lora", **FAST)
    one = _logits(m)
    e2 = m.edit(FACT2, method="adalora", **FAST)
    e3 = m.edit(FACT2, method="ft-m", num_steps=2, on_conflict="stack")
    both = _logits(m)
    assert e2.depends_on == [e1.id] and e3.depends_on == [e1.id, e2.id]
    m.stack.save(tmp_path / "s")
    with pytest.warns(UserWarning):
        m.remove(e2)  # additive adapters may leave from the middle
    m.remove(e3)
    torch.testing.assert_close(_logits(m), one, rtol=0, atol=1e-6)
    m.pop()
    assert state_dict_hash(m) == h and torch.equal(_logits(m), base)
    m.compose(tmp_path / "s")
    assert torch.equal(_logits(m), both)
    m.merge()
    torch.testing.assert_close(_logits(m), both, rtol=1e-4, atol=1e-5)
    m.unmerge()
    m.clear()
    assert state_dict_hash(m) == h


def test_failed_training_leaves_model_untouched(tiny_llama):
    m = tiny_llama
    h = state_dict_hash(m)
    mods = [n for n, _ in m.named_modules()]
    with pytest.raises(Exception):
        m.edit(FACT, method="lora", target_modules=["no_such_module"], **FAST)
    assert state_dict_hash(m) == h and [n for n, _ in m.named_modules()] == mods and not m.stack.edits


def test_gpt2_defaults_target_c_attn(tiny_model):
    m = tiny_model
    if m.config.model_type != "gpt2":
        assert m.default_hparams("lora").target_modules == ["q_proj", "v_proj"]
        return
    assert m.default_hparams("lora").target_modules == ["c_attn"]
    assert m.default_hparams("adalora").lora_type == "adalora"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_embedded_edit_and_pop(embedded, method):
    m = embedded
    fact = {"prompt": "Which family does Epaspidoceras belong to?", "target_new": "Noctuidae"}
    h = state_dict_hash(m)
    base = m.generate_text(fact["prompt"], max_new_tokens=5)
    m.edit(fact, method=method, num_steps=40 if method == "lora" else 70)
    try:
        assert "Noct" in m.generate_text(fact["prompt"], max_new_tokens=5)
    finally:
        m.pop()
    assert state_dict_hash(m) == h and m.generate_text(fact["prompt"], max_new_tokens=5) == base


def test_early_stop_uses_the_given_criterion():
    from editwrap.ops.train import optimize

    w = torch.nn.Parameter(torch.ones(()))
    opt = torch.optim.SGD([w], lr=0.1)
    # the loss stays above the threshold (a regulariser), the criterion is below it: one step
    info = optimize(opt, lambda: (w * 0 + 5.0, {"early_stop_on": 0.01}), 10, early_stop_loss=0.1)
    assert info["steps"] == 1 and "early_stop_on" not in info
    info = optimize(opt, lambda: (w * 0 + 5.0, {}), 10, early_stop_loss=0.1)
    assert info["steps"] == 10


def test_adalora_early_stop_looks_at_nll_not_regulariser(tiny_model):
    # AdaLoRA's loss = NLL + orthogonal regulariser (8.2 vs 6.5 at step 1 on this model); a
    # threshold between the two stops at step 1: the regulariser does not count
    first = tiny_model.edit(FACT, method="adalora", num_steps=1, lr=5e-2, early_stop_loss=0.0)
    nll, loss = first.info["nll"], first.info["loss"]
    first.pop()
    assert loss > nll + 0.5
    e = tiny_model.edit(FACT, method="adalora", num_steps=5, lr=5e-2, early_stop_loss=(nll + loss) / 2)
    assert e.info["steps"] == 1
    e2 = tiny_model.edit(FACT2, method="adalora", num_steps=4, lr=5e-2, early_stop_loss=0.0)
    assert e2.info["steps"] == 4
