"""Half precision: loading with ``dtype``/``torch_dtype``, and every method on a bf16/fp16 model
(the edit moves the target's probability up, pops bit-exact, saves and reloads)."""
from __future__ import annotations

import logging
import warnings

import pytest
import torch

from editwrap import EditableModel, state_dict_hash
from tests.conftest import build_tiny

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
#: the subject ends the prompt: on a tiny random model a value at the subject reaches the target's logits
FACT = {"prompt": "The city of the Eiffel Tower", "subject": "Eiffel Tower", "target_new": "Rome"}
LT = dict(mom2_n_tokens=300, v_num_grad_steps=15, context_templates=[(3, 2)])
#: method -> hyperparameter overrides: few steps, and strong enough that each moves log p(target)
#: by 0.3 nats or more in float32 on the tiny model (its logits span a few nats only)
CASES = {
    "rome": dict(LT, clamp_norm_factor=100.0, kl_factor=0.0),
    "memit": LT,
    "alphaedit": dict(LT, nullspace_threshold=1e3, L2=0.1),
    "pmet": dict(LT, clamp_norm_factor=100.0, v_weight_decay=0.0),
    "ultraedit": {},
    "kn": dict(steps=4),
    "ft-l": dict(num_steps=5, lr=0.1, norm_constraint=1.0),
    "ft-m": dict(num_steps=5, lr=0.1),
    "lora": dict(num_steps=3, lr=5e-2),
    "adalora": dict(num_steps=3, lr=5e-2),
    "grace": dict(n_iter=10),
    "wise": dict(n_iter=10, mask_ratio=1.0),
    "melo": dict(num_steps=5),
    "t-patcher": dict(num_steps=5, memory_texts=2),
    "ice": {},
}


def _name(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def _logits(m, text: str) -> torch.Tensor:
    with torch.no_grad():
        return m(**m.tokenizer(text, return_tensors="pt")).logits


# ---------------------------------------------------------------- loading

@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny Llama saved in bfloat16 (so ``"auto"`` has a dtype to find)."""
    d = tmp_path_factory.mktemp("tiny_bf16")
    build_tiny("llama", tiny_tokenizer).unwrap().to(torch.bfloat16).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.mark.parametrize("kw, want", [
    ({}, torch.float32),
    ({"dtype": "auto"}, torch.bfloat16),
    ({"torch_dtype": "auto"}, torch.bfloat16),
    ({"dtype": torch.float16}, torch.float16),
    ({"torch_dtype": torch.float16}, torch.float16),
    ({"torch_dtype": "float32"}, torch.float32),
    ({"dtype": torch.bfloat16, "torch_dtype": "bfloat16"}, torch.bfloat16),
], ids=["neither", "dtype-auto", "torch_dtype-auto", "dtype", "torch_dtype", "torch_dtype-str", "both-agree"])
def test_from_pretrained_honours_dtype_and_torch_dtype(bf16_dir, kw, want):
    m = EditableModel.from_pretrained(bf16_dir, **kw)
    assert m.dtype == want and all(p.dtype == want for p in m.parameters())


def test_from_pretrained_refuses_disagreeing_dtypes(bf16_dir):
    with pytest.raises(ValueError, match="dtype=.*torch_dtype=.*disagree.*dtype wins"):
        EditableModel.from_pretrained(bf16_dir, dtype=torch.float16, torch_dtype=torch.bfloat16)


def test_cli_dtype_flag(bf16_dir):
    from editwrap.cli import _load_model, build_parser

    args = build_parser().parse_args(["edit", "--model", str(bf16_dir), "--prompt", "a", "--target", "b",
                                      "--dtype", "float16"])
    assert _load_model(args).dtype == torch.float16
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edit", "--prompt", "a", "--target", "b", "--dtype", "half"])
    for argv in (["eval", "lm", "--stack", "s"], ["serve"], ["eval", "knowedit", "--dataset", "zsre", "--data", "d",
                                                            "--method", "rome"]):
        assert build_parser().parse_args([*argv, "--dtype", "bfloat16"]).dtype == "bfloat16"


# ---------------------------------------------------------------- every method in every dtype

def _tiny(tokenizer, dtype: torch.dtype, arch: str = "llama"):
    """The tiny random Llama (or GPT-2) with embeddings ×10 (tied: logits span ~±10 instead of
    ~±0.6, so an edit can move them), cast to ``dtype``."""
    m = build_tiny(arch, tokenizer)
    with torch.no_grad():
        m.get_input_embeddings().weight.mul_(10.0)
    return m.to(dtype)


def _edit_roundtrip(m, method: str, path, hp: dict | None = None) -> float:
    """Edit, check pop/save/compose/pop are exact; return the change of log p(target)."""
    h, base = state_dict_hash(m), _logits(m, FACT["prompt"])
    target = " " + FACT["target_new"]
    before = m.loglikelihood(FACT["prompt"], target)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = m.edit(FACT, method=method, **(CASES[method] if hp is None else hp))
    assert not [w for w in caught if "another base model" in str(w.message)]  # the same checkpoint in any dtype
    after = m.loglikelihood(FACT["prompt"], target)
    assert state_dict_hash(m) == h  # no weight written, no dtype changed
    edited = _logits(m, FACT["prompt"])
    assert torch.isfinite(edited).all()
    m.stack.save(path)
    e.pop()
    assert state_dict_hash(m) == h and torch.equal(_logits(m, FACT["prompt"]), base)
    m.compose(path)
    assert torch.equal(_logits(m, FACT["prompt"]), edited) and m.loglikelihood(FACT["prompt"], target) == after
    if e.entry.plane == "text":  # a random model does not read its context: the rewrite is the edit
        assert FACT["target_new"] in m._route(FACT["prompt"])[0]
    m.pop()
    assert state_dict_hash(m) == h and torch.equal(_logits(m, FACT["prompt"]), base)
    return after - before


@pytest.mark.parametrize("method", [*CASES, *[f"gpt2:{m}" for m in ("rome", "ft-m", "lora", "grace", "wise")]])
def test_method_in_each_dtype(method, tiny_tokenizer, tmp_path):
    """The edit in bf16 / fp16 pops bit-exact, reloads, and moves log p(target) as in float32
    (GPT-2: Conv1D layers store their weight transposed)."""
    arch, method = method.split(":") if ":" in method else ("llama", method)
    moved = {}
    for dtype in DTYPES:
        m = _tiny(tiny_tokenizer, dtype, arch)
        moved[dtype] = _edit_roundtrip(m, method, tmp_path / _name(dtype))
        assert m.dtype == dtype
    ref = moved[torch.float32]
    if method == "ice":  # text plane: the rewrite is checked above; a random model ignores its context
        return
    assert ref > 0.3, f"{method}: float32 moved log p(target) by {ref:.3f} only; strengthen its test settings"
    for dtype in DTYPES[1:]:
        assert abs(moved[dtype] - ref) <= 0.1 * ref + 0.05, f"{method} in {_name(dtype)}: {moved}"


# ---------------------------------------------------------------- the embedded model in bfloat16

@pytest.fixture(scope="module")
def embedded_bf16():
    m = EditableModel.from_pretrained(torch_dtype=torch.bfloat16)
    yield m
    assert len(m.stack) == 0, "a test left edits on the bf16 embedded model"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit", "ft-m", "lora", "grace", "wise", "kn", "melo"])
def test_embedded_bf16_demo_edit_and_pop(method, embedded_bf16, monkeypatch):
    """The demo edit in bf16 answers the new city without repeating it (KN and MELO did: "Rome Rome
    Rome") and pops bit-exact."""
    monkeypatch.delenv("EDITWRAP_CACHE_STATS", raising=False)  # the user's statistics cache, as for `embedded`
    m, prompt = embedded_bf16, "The Eiffel Tower is located in the city of"
    assert m.dtype == torch.bfloat16
    h, before = state_dict_hash(m), m.generate_text(prompt, max_new_tokens=8)
    assert before.strip().startswith("Paris")
    with m.edit({"prompt": prompt, "subject": "Eiffel Tower", "target_new": "Rome"}, method=method):
        after = m.generate_text(prompt, max_new_tokens=8)
        print(f"{method} bf16: {after!r}")
        assert after.strip().startswith("Rome") and "Rome Rome" not in after and "Rome, Rome" not in after, after
    assert state_dict_hash(m) == h and m.generate_text(prompt, max_new_tokens=8) == before


# ---------------------------------------------------------------- noise

def test_peft_import_note_about_4bit_hub_kernel_is_dropped(caplog):
    """``import peft`` imports bitsandbytes for any model; its note about an optional 4-bit CPU kernel
    from the Hub is dropped, any other bitsandbytes message is kept."""
    from editwrap.entries.adapter import quiet_peft_import

    quiet_peft_import()
    lg = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=lg.name):
        lg.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure", "offline")
        lg.warning("some other bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning"]


def test_lm_eval_model_args_dtype_reach_from_pretrained(bf16_dir):
    """``--model_args dtype=...`` as lm-eval passes it (strings, "auto" included)."""
    from editwrap.integrations.lm_eval import EditwrapLM

    assert EditwrapLM(pretrained=str(bf16_dir), dtype="auto").model.dtype == torch.bfloat16
    assert EditwrapLM(pretrained=str(bf16_dir), dtype="float16").model.dtype == torch.float16
    assert EditwrapLM(pretrained=str(bf16_dir)).model.dtype == torch.float32


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizer):
    """A MEND editor and a SERAC artifact trained on the float32 tiny model."""
    from editwrap import Fact
    from editwrap.methods.mend import train_mend
    from editwrap.methods.mend.hparams import MendTrainConfig
    from editwrap.methods.serac import train_serac
    from editwrap.methods.serac.hparams import SeracTrainConfig

    m = _tiny(tiny_tokenizer, torch.float32)
    records = [Fact(prompt=f"The city of the {s}", target_new=t, rephrase=[f"The {s} is in the city of"])
               for s, t in [("Eiffel Tower", "Rome"), ("Big Ben", "Paris"), ("Colosseum", "London"),
                            ("Brandenburg Gate", "Madrid"), ("Golden Gate", "Berlin"), ("Kremlin", "Tokyo")]]
    out = tmp_path_factory.mktemp("trained")
    train_mend(m, records, out / "mend", MendTrainConfig(layers=[2, 3], rank=4, steps=6, batch_size=2, seed=0,
                                                        lr=1e-2, lr_lr=1e-1), progress=False)
    train_serac(m, records, out / "serac", SeracTrainConfig(cls_steps=100, cf_steps=30, cf_batch_size=3, cf_lr=3e-2,
                                                             val_fraction=0.0), progress=False, data_name="toy")
    return {"mend": {"editor": str(out / "mend"), "lr_scale": 10.0}, "serac": {"artifact": str(out / "serac")}}


@pytest.mark.parametrize("method", ["mend", "serac"])
def test_trained_method_in_each_dtype(method, trained, tiny_tokenizer, tmp_path):
    """An editor / artifact trained in float32 edits the same checkpoint loaded in bf16 / fp16 (no
    "another base model" warning), pops bit-exact, reloads, and acts as in float32."""
    moved = {d: _edit_roundtrip(_tiny(tiny_tokenizer, d), method, tmp_path / _name(d), trained[method])
             for d in DTYPES}
    ref = moved[torch.float32]
    assert ref > 0.3, moved
    for dtype in DTYPES[1:]:
        assert abs(moved[dtype] - ref) <= 0.1 * ref + 0.05, f"{method} in {_name(dtype)}: {moved}"


# ---------------------------------------------------------------- int8 base, half-precision activations

@pytest.fixture(scope="module")
def int8_fp16(tmp_path_factory, tiny_tokenizer):
    """The scaled tiny Llama quantized to int8 (bitsandbytes, CPU backend) with float16 activations,
    as LLM.int8() runs on a GPU."""
    from editwrap.integrations.quant import load_quantized

    d = tmp_path_factory.mktemp("tiny_x10")
    _tiny(tiny_tokenizer, torch.float32).unwrap().save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return load_quantized(d, bits=8, dtype=torch.float16)


@pytest.mark.parametrize("method", [m for m in CASES if m != "ice"])
def test_method_on_int8_base_with_fp16_activations(method, int8_fp16, tmp_path):
    from editwrap.integrations.quant import int8_state, quantized_modules

    m = int8_fp16
    assert m.dtype == torch.float16 and quantized_modules(m)
    h8 = int8_state(m)
    assert _edit_roundtrip(m, method, tmp_path / "stack") > 0.3
    assert int8_state(m) == h8  # int8 weights and their scales never written


@pytest.mark.parametrize("method", ["rome", "lora", "grace"])
def test_method_on_nf4_base_with_fp16_compute(method, tmp_path_factory, tiny_tokenizer, tmp_path):
    """4-bit (nf4) layers computing in float16, as QLoRA-style loads set ``bnb_4bit_compute_dtype``."""
    from editwrap.integrations.quant import bnb_config, int8_state

    d = tmp_path_factory.mktemp("tiny_x10_nf4")
    _tiny(tiny_tokenizer, torch.float32).unwrap().save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    m = EditableModel.from_pretrained(d, quantization_config=bnb_config(4, bnb_4bit_compute_dtype=torch.float16),
                                      device_map="cpu", dtype=torch.float16)
    assert type(m.get_submodule("model.layers.1.mlp.down_proj")).__name__ == "Linear4bit"
    h4 = int8_state(m)
    assert _edit_roundtrip(m, method, tmp_path / "stack") > 0.3
    assert int8_state(m) == h4
