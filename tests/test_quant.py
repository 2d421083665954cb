"""8-bit (bitsandbytes) editing: side-cars over Linear8bitLt, exact pop, refusals, stack portability.

Fast tests quantize a tiny random Llama (saved to tmp, reloaded with a BitsAndBytesConfig on CPU:
bitsandbytes >= 0.45 has a CPU backend). The slow test does ROME + pop on the real embedded model
in 8-bit; the GPU test does the same on CUDA and is skipped without one.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from editwrap import state_dict_hash
from editwrap.stack import StackError

from .conftest import build_tiny


FACT = {"prompt": "The Eiffel Tower is located in the city of", "subject": "Eiffel Tower", "target_new": "Rome"}
FAST = {"mom2_n_tokens": 500, "v_num_grad_steps": 3, "context_templates": [[4, 1]]}


@pytest.fixture
def q8(tiny_llama_dir):
    from editwrap.integrations.quant import load_quantized

    return load_quantized(tiny_llama_dir, bits=8)


def _logits(m):
    ids = m.tokenizer([FACT["prompt"], "Paris is the capital of"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return m(**ids).logits


def test_loads_as_int8_sidecar_layers(q8):
    from editwrap.integrations.quant import is_quantized, quantization_label, quantized_modules

    names = quantized_modules(q8)
    assert names and all(type(q8.get_submodule(n)).__name__ == "Linear8bitLt" for n in names)
    assert q8.get_submodule(names[0]).weight.dtype == torch.int8
    assert is_quantized(q8) and quantization_label(q8) == "bnb-int8"


def test_rome_on_int8_pop_is_bit_exact(q8):
    from editwrap.integrations.quant import int8_state, int8_state_hash

    before, s0, h0 = _logits(q8), state_dict_hash(q8), int8_state(q8)
    mod = q8.get_submodule("model.layers.1.mlp.down_proj")
    data_ptr = mod.weight.data.data_ptr()
    e = q8.edit(FACT, method="rome", **FAST)
    assert not torch.equal(_logits(q8), before)
    assert int8_state(q8) == h0, "an edit must never rewrite int8 weights or SCB scales"
    assert e.entry.parts["model.layers.1.mlp.down_proj"]["U"].dtype == torch.float32  # float side-car
    q8.pop()
    assert torch.equal(_logits(q8), before)
    assert state_dict_hash(q8) == s0 and int8_state(q8) == h0 and int8_state_hash(q8)
    assert mod.weight.data.data_ptr() == data_ptr


@pytest.mark.parametrize("method,hp", [("memit", {**FAST, "layers": [1, 2]}), ("ft-m", {"num_steps": 3}),
                                       ("ft-l", {"num_steps": 3})])
def test_other_delta_methods_on_int8(q8, method, hp):
    before, s0 = _logits(q8), state_dict_hash(q8)
    q8.edit(FACT, method=method, **hp)
    assert not torch.equal(_logits(q8), before)
    q8.pop()
    assert torch.equal(_logits(q8), before) and state_dict_hash(q8) == s0


def test_merge_refused_and_requantize_merge_reports_error(q8):
    from editwrap.integrations.quant import int8_state, requantize_merge

    before, h0 = _logits(q8), int8_state(q8)
    q8.edit(FACT, method="rome", **FAST)
    edited = _logits(q8)
    with pytest.raises(StackError, match="quantized layer.*requantize_merge"):
        q8.merge()
    assert not q8.is_merged and int8_state(q8) == h0
    report = requantize_merge(q8)
    (name, r), = report.items()
    assert r["quantized"] and 0 < r["rel_err_weight"] < 0.05 and r["rel_err_delta"] < 1.0
    assert q8.is_merged and int8_state(q8) != h0
    assert (_logits(q8) - edited).abs().max() < 0.5  # lossy but close
    with pytest.raises(StackError, match="merged"):
        q8.pop()
    q8.unmerge()
    assert int8_state(q8) == h0 and torch.equal(_logits(q8), edited)
    q8.pop()
    assert torch.equal(_logits(q8), before)


def test_method_that_cannot_run_quantized_is_refused(q8, monkeypatch):
    from editwrap.methods.base import get_method

    cls = type(get_method("ft-m"))
    monkeypatch.setattr(cls, "supports_quantized", False, raising=False)
    monkeypatch.setattr(cls, "quantized_reason", "it writes the base weights", raising=False)
    s0 = state_dict_hash(q8)
    with pytest.raises(StackError, match="cannot edit a quantized.*writes the base weights"):
        q8.edit(FACT, method="ft-m", num_steps=1)
    assert len(q8.stack) == 0 and state_dict_hash(q8) == s0


def test_float_stack_loads_onto_int8_same_checkpoint(tiny_llama_dir, q8, tmp_path, tiny_tokenizer):
    from editwrap import EditableModel

    f32 = EditableModel.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    assert f32.fingerprint() != q8.fingerprint()
    f32.edit(FACT, method="ft-m", num_steps=3)
    f32.stack.save(tmp_path / "s")
    with pytest.warns(UserWarning, match="computed on float weights of this checkpoint"):
        q8.compose(tmp_path / "s")
    assert len(q8.stack) == 1
    q8.clear()
    other = build_tiny("llama", tiny_tokenizer, seed=1)  # another checkpoint: still refused
    with pytest.raises(StackError, match="fingerprint"):
        other.compose(tmp_path / "s")
    with warnings.catch_warnings():  # the same load (fp32 -> fp32) matches by fingerprint, no warning
        warnings.simplefilter("error")
        f32.clear()
        f32.compose(tmp_path / "s")


def test_covariance_through_int8_layers(q8, tiny_llama_dir):
    from editwrap import EditableModel
    from editwrap.ops.covariance import second_moment, stats_path

    f32 = EditableModel.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    mod = "model.layers.1.mlp.down_proj"
    c8 = second_moment(q8, [mod], n_tokens=500, progress=False)[mod]
    c32 = second_moment(f32, [mod], n_tokens=500, progress=False)[mod]
    assert stats_path(q8, mod, None, 500) != stats_path(f32, mod, None, 500)  # cached separately
    rel = float((c8 - c32).norm() / c32.norm())
    assert 0 < rel < 0.1


def test_nf4_rome_pop_exact(tiny_llama_dir):
    from editwrap.integrations.quant import int8_state, load_quantized

    q4 = load_quantized(tiny_llama_dir, bits=4)
    before, s0, h0 = _logits(q4), state_dict_hash(q4), int8_state(q4)
    q4.edit(FACT, method="rome", **FAST)
    assert not torch.equal(_logits(q4), before)
    q4.pop()
    assert torch.equal(_logits(q4), before) and state_dict_hash(q4) == s0 and int8_state(q4) == h0


def test_lora_on_int8(q8):
    before, s0 = _logits(q8), state_dict_hash(q8)
    e = q8.edit(FACT, method="lora", num_steps=3)
    assert not torch.equal(_logits(q8), before)
    e.pop()
    assert torch.equal(_logits(q8), before) and state_dict_hash(q8) == s0


def test_bad_backend_and_bits():
    from editwrap.integrations.quant import bnb_config, load_quantized

    with pytest.raises(ValueError, match="backend"):
        load_quantized(None, backend="gptq")
    with pytest.raises(ValueError, match="bits"):
        bnb_config(3)


@pytest.mark.slow
def test_embedded_int8_rome_pop_exact():
    from editwrap.integrations.quant import int8_state, load_quantized

    m = load_quantized(None, bits=8)
    ids = m.tokenizer(["The Eiffel Tower is located in"], return_tensors="pt")
    with torch.no_grad():
        before = m(**ids).logits
    h0, s0 = int8_state(m), state_dict_hash(m)
    m.edit({"prompt": "The Eiffel Tower is located in", "subject": "Eiffel Tower", "target_new": "Rome"},
           method="rome", mom2_n_tokens=1000, v_num_grad_steps=8)
    with torch.no_grad():
        edited = m(**ids).logits
    assert not torch.equal(edited, before)
    assert int8_state(m) == h0
    m.pop()
    with torch.no_grad():
        assert torch.equal(m(**ids).logits, before)
    assert int8_state(m) == h0 and state_dict_hash(m) == s0


@pytest.mark.gpu  # skipped without CUDA (conftest)
def test_cuda_int8_rome_pop_exact(tiny_llama_dir):
    from editwrap.integrations.quant import int8_state, load_quantized

    m = load_quantized(tiny_llama_dir, bits=8, device_map={"": 0})
    assert next(m.parameters()).device.type == "cuda"
    before, h0, s0 = _logits(m), int8_state(m), state_dict_hash(m)
    m.edit(FACT, method="rome", **FAST)
    assert not torch.equal(_logits(m), before) and int8_state(m) == h0
    m.pop()
    assert torch.equal(_logits(m), before) and int8_state(m) == h0 and state_dict_hash(m) == s0
