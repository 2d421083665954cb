"""Export: side-car edits as one PEFT LoRA adapter, a merged checkpoint with tokenizer, a GGUF file.

Each round trip is checked against the edited model's own logits (float tolerance), on tiny random
Llama and GPT-2 models; the slow test checks the edited answer on the embedded SmolLM2 survives.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from editwrap import EditableModel, Fact, Probe, state_dict_hash
from editwrap.entries.delta import DeltaEntry
from editwrap.export import ExportError, export_gguf, export_merged, export_peft, export_peft_sets
from editwrap.arch import arch_of
from editwrap.stack import Edit

F = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
G = Fact(prompt="The capital of France is", subject="France", target_new="Berlin")
LOCATE = dict(mom2_n_tokens=300, v_num_grad_steps=3, context_templates=[(3, 2)])
ADAPTER = dict(num_steps=3, lr=5e-2)
TEXT = "The Eiffel Tower is located in the city of Paris, and 42 apples"


def logits(m, text: str = TEXT) -> torch.Tensor:
    with torch.no_grad():
        return m(**m.tokenizer(text, return_tensors="pt")).logits


@contextlib.contextmanager
def peft_on(m, path: Path):
    """PEFT's own LoRA layers loaded on ``m`` (its stack emptied first); removed on exit, with the
    ``requires_grad`` flags PEFT turns off put back (the embedded model is shared by the session)."""
    from peft import PeftModel

    m.clear()
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    pm = PeftModel.from_pretrained(m, str(path))
    try:
        yield pm
    finally:
        pm.unload()
        for n, p in m.named_parameters():
            p.requires_grad_(flags[n])


def peft_logits(m, path: Path) -> torch.Tensor:
    with peft_on(m, path) as pm:
        return logits(pm)


def mixed_stack(m) -> None:
    """Every low-rank and dense side-car kind, several on the same modules."""
    m.edit(F, method="rome", layer=1, **LOCATE)
    m.edit(G, method="memit", layers=[1, 2], **LOCATE)
    m.edit(G, method="ft-m", num_steps=2, on_conflict="stack")
    m.edit(F, method="lora", on_conflict="stack", **ADAPTER)
    m.edit(F, method="adalora", on_conflict="stack", **ADAPTER)
    m.edit(F, method="kn", on_conflict="stack")


def test_peft_adapter_gives_the_edited_logits(tiny_model, tmp_path):
    m = tiny_model
    base = logits(m)
    mixed_stack(m)
    edited = logits(m)
    ids = [e.id for e in m.stack]
    path = m.stack.export_peft(tmp_path / "adapter")
    cfg = json.loads((path / "adapter_config.json").read_text())
    note = json.loads((path / "editwrap_export.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["lora_alpha"] == cfg["r"] and cfg["rank_pattern"] == cfg["alpha_pattern"]
    assert cfg["r"] == max(v["rank"] for v in note["modules"].values())
    assert set(cfg["rank_pattern"]) < set(note["modules"])
    assert cfg["fan_in_fan_out"] == (m.config.model_type == "gpt2")  # GPT-2's Conv1D stores (in, out)
    assert [e["id"] for e in note["edits"]] == ids and note["skipped"] == []
    several = [mod for mod, v in note["modules"].items() if len(v["edits"]) > 1]
    assert several, "edits on the same module are concatenated into one factor pair"
    dense = [v for v in note["modules"].values() if "svd_rel_error" in v]
    assert dense and all(v["svd_rel_error"] < 1e-6 for v in dense)  # the FT delta, factorised exactly
    got = peft_logits(m, path)
    assert (edited - base).abs().max() > 1e-2
    torch.testing.assert_close(got, edited, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method,kw", [
    ("alphaedit", dict(LOCATE, layers=[1, 2])), ("pmet", dict(LOCATE, layers=[1, 2])),
    ("ultraedit", dict(ridge=1e-4, lr=0.1)), ("ft-l", dict(num_steps=2)),
])
def test_peft_adapter_each_delta_method(tiny_llama, tmp_path, method, kw):
    m = tiny_llama
    m.edit([F, G] if method == "ultraedit" else F, method=method, **kw)
    edited = logits(m)
    torch.testing.assert_close(peft_logits(m, export_peft(m, tmp_path / "a")), edited, rtol=1e-4, atol=1e-5)


def test_peft_adapter_of_a_mend_edit(tiny_llama, tmp_path):
    from editwrap.methods.mend.hparams import MendTrainConfig
    from editwrap.methods.mend import train_mend

    m = tiny_llama
    recs = [Fact(prompt=f"The {a} of {s} is", target_new=t, rephrase=[f"{s}'s {a} is"],
                 locality={"n": [Probe(prompt="The capital of Spain is", answer="Madrid")]})
            for a, s, t in [("capital", "France", "Rome"), ("language", "Brazil", "French")]]
    cfg = MendTrainConfig(layers=[2, 3], rank=4, steps=2, batch_size=2, save_every=2, seed=0, lr=1e-2, lr_lr=1e-1)
    train_mend(m, recs, tmp_path / "ed", cfg, progress=False)
    m.edit(F, method="mend", editor=str(tmp_path / "ed"))
    edited = logits(m)
    torch.testing.assert_close(peft_logits(m, export_peft(m, tmp_path / "a")), edited, rtol=1e-4, atol=1e-5)


@pytest.fixture
def sets_model(tiny_model):
    """An untagged edit, one for set a, one for set b; each view's logits."""
    m = tiny_model
    m.edit(G, method="rome", layer=1, **LOCATE)
    m.edit(F, method="rome", layer=2, edit_set="a", **LOCATE)
    m.edit(F.model_copy(update={"target_new": "London"}), method="memit", layers=[1, 2], edit_set="b", **LOCATE)
    views = {"all": logits(m)}
    for name, sel in {"a": ("a",), "b": ("b",), "untagged": ()}.items():
        with m.using(*sel):
            views[name] = logits(m)
    return m, views


def test_edit_set_adapters_match_each_view(sets_model, tmp_path):
    m, views = sets_model
    g, a, b = (e.id for e in m.stack)
    out = export_peft_sets(m, tmp_path / "sets")
    assert sorted(out) == ["a", "b"]
    only_a = export_peft(m, tmp_path / "only-a", "a", include_untagged=False)
    untagged = export_peft(m, tmp_path / "untagged", ())
    everything = export_peft(m, tmp_path / "all")
    ids = {p.name: [e["id"] for e in json.loads((p / "editwrap_export.json").read_text())["edits"]]
           for p in [out["a"], out["b"], only_a, untagged, everything]}
    assert ids == {"a": [g, a], "b": [g, b], "only-a": [a], "untagged": [g], "all": [g, a, b]}
    with pytest.raises(ValueError, match=r"unknown edit set\(s\) \['c'\].*known sets: \['a', 'b'\]"):
        export_peft(m, tmp_path / "c", "c")
    with pytest.raises(ExportError, match="include_untagged=False needs edit_set"):
        export_peft(m, tmp_path / "x", include_untagged=False)
    for name, path in [("a", out["a"]), ("b", out["b"]), ("untagged", untagged), ("all", everything)]:
        stack = list(m.stack)
        torch.testing.assert_close(peft_logits(m, path), views[name], rtol=1e-4, atol=1e-5)
        m.compose(stack)


def test_non_weight_entries_are_refused_by_name(tiny_llama, tmp_path):
    m = tiny_llama
    r = m.edit(F, method="rome", layer=1, **LOCATE)
    ice = m.edit(G, method="ice")
    grace = m.edit(F, method="grace", n_iter=5, eps=1e-3, on_conflict="stack")
    before = state_dict_hash(m)
    for export in (lambda p: export_peft(m, p), lambda p: export_merged(m, p), lambda p: export_gguf(m, p / "m.gguf")):
        with pytest.raises(ExportError) as err:
            export(tmp_path / "refused")
        msg = str(err.value)
        assert f"{ice.id} ice (prompt)" in msg and f"{grace.id} grace (grace)" in msg and r.id not in msg
        assert "input text" in msg and "activations" in msg and "skip_unsupported=True" in msg
    assert not (tmp_path / "refused").exists() and state_dict_hash(m) == before and len(m.stack) == 3
    path = export_peft(m, tmp_path / "kept", skip_unsupported=True)
    note = json.loads((path / "editwrap_export.json").read_text())
    assert [e["id"] for e in note["edits"]] == [r.id]
    assert [(s["id"], s["method"]) for s in note["skipped"]] == [(ice.id, "ice"), (grace.id, "grace")]
    m.clear()
    with pytest.raises(ExportError, match="no weight-delta edit to export"):
        export_peft(m, tmp_path / "empty")


def _random_edit(m, name: str, part: dict[str, torch.Tensor]) -> Edit:
    return m.push(Edit("random", [F], {}, DeltaEntry({name: part})))


def test_dense_delta_exact_rank_max_rank_and_many_edits(tiny_llama, tmp_path):
    m = tiny_llama
    name = arch_of(m).mlp_out_at(1)
    out_f, in_f = m.get_submodule(name).weight.shape
    g = torch.Generator().manual_seed(0)
    _random_edit(m, name, {"D": 0.1 * torch.randn(out_f, 3, generator=g) @ torch.randn(3, in_f, generator=g)})
    edited = logits(m)
    path = export_peft(m, tmp_path / "dense")
    mod = json.loads((path / "editwrap_export.json").read_text())["modules"][name]
    assert mod["rank"] == 3 and mod["svd_rel_error"] < 1e-6
    with pytest.raises(ExportError, match=r"need rank 3 to be exact, above max_rank=2.*truncated SVD"):
        export_peft(m, tmp_path / "capped", max_rank=2)
    torch.testing.assert_close(peft_logits(m, path), edited, rtol=1e-4, atol=1e-5)
    # more stacked rank-one edits than the matrix has rank: stored at its exact rank instead
    for i in range(out_f + 4):
        _random_edit(m, name, {"U": 0.05 * torch.randn(out_f, 1, generator=g), "V": torch.randn(in_f, 1, generator=g)})
    edited = logits(m)
    path = export_peft(m, tmp_path / "many")
    mod = json.loads((path / "editwrap_export.json").read_text())["modules"][name]
    assert mod["rank"] == min(out_f, in_f) and len(mod["edits"]) == out_f + 4
    torch.testing.assert_close(peft_logits(m, path), edited, rtol=1e-4, atol=1e-5)


def test_merged_checkpoint_with_tokenizer_and_note(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = tiny_model
    mixed_stack(m)
    edited, h, n = logits(m), state_dict_hash(m), len(m.stack)
    path = export_merged(m, tmp_path / "merged")
    assert state_dict_hash(m) == h and len(m.stack) == n and not m.is_merged  # the live model is untouched
    torch.testing.assert_close(logits(m), edited, rtol=0, atol=0)
    plain = AutoModelForCausalLM.from_pretrained(str(path))
    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok(TEXT)["input_ids"] == m.tokenizer(TEXT)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(**tok(TEXT, return_tensors="pt")).logits, edited, rtol=1e-4, atol=1e-5)
    note = json.loads((path / "editwrap_edits.json").read_text())
    assert [(e["id"], e["method"]) for e in note["edits"]] == [(e.id, e.method) for e in m.stack]
    assert note["edits"][0]["facts"][0] == {"prompt": F.prompt, "subject": F.subject, "target_new": "Rome",
                                            "ground_truth": None}
    again = EditableModel.from_pretrained(str(path))  # editable again, tokenizer found beside the weights
    assert len(again.stack) == 0
    torch.testing.assert_close(logits(again), edited, rtol=1e-4, atol=1e-5)


def test_merged_edit_set_and_refusals(sets_model, tmp_path):
    from transformers import AutoModelForCausalLM

    m, views = sets_model
    path = export_merged(m, tmp_path / "a", "a")
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(str(path))(**m.tokenizer(TEXT, return_tensors="pt")).logits
    torch.testing.assert_close(got, views["a"], rtol=1e-4, atol=1e-5)
    m.merge()
    with pytest.raises(ExportError, match=r"merged into the weights; call model.unmerge\(\)"):
        export_merged(m, tmp_path / "m")
    m.unmerge()


def test_tied_head_edit_refused_for_merged_but_exported_as_lora(tiny_llama, tmp_path):
    m = tiny_llama  # tie_word_embeddings=True: lm_head shares the embedding matrix
    v, d = m.lm_head.weight.shape
    _random_edit(m, "lm_head", {"U": 0.1 * torch.randn(v, 1), "V": torch.randn(d, 1)})
    edited = logits(m)
    with pytest.raises(ExportError, match=r"'lm_head'.*shares its weight with \['model.embed_tokens.weight'\]"):
        export_merged(m, tmp_path / "m")
    torch.testing.assert_close(peft_logits(m, export_peft(m, tmp_path / "a")), edited, rtol=1e-4, atol=1e-5)


def test_folder_without_tokenizer_is_a_clear_error(tiny_llama, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    m = tiny_llama
    m.edit(F, method="rome", layer=1, **LOCATE)
    edited = logits(m)
    m.save_pretrained(tmp_path / "weights-only")  # folds every side-car in, writes no tokenizer
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "weights-only"))
        torch.testing.assert_close(plain(**tiny_tokenizer(TEXT, return_tensors="pt")).logits, edited,
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"has no tokenizer.*tokenizer=.*export merged"):
        EditableModel.from_pretrained(str(tmp_path / "weights-only"))
    ok = EditableModel.from_pretrained(str(tmp_path / "weights-only"), tokenizer=tiny_tokenizer)
    torch.testing.assert_close(logits(ok), edited, rtol=1e-4, atol=1e-5)


def test_gguf_round_trip_tiny_llama(tiny_llama, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = tiny_llama
    m.edit(F, method="rome", layer=1, **LOCATE)
    m.edit(G, method="ft-m", num_steps=2)
    edited = logits(m)
    merged = export_merged(m, tmp_path / "merged")
    for src, dtype, tol in [(m, "f32", 1e-5), (m, "f16", 5e-3), (merged, "f32", 1e-5)]:
        out = export_gguf(src, tmp_path / f"e-{dtype}-{isinstance(src, Path)}.gguf", dtype=dtype)
        meta = gguf.GGUFReader(str(out)).fields
        assert "editwrap.edits" in meta and "output.weight" not in [t.name for t in gguf.GGUFReader(str(out)).tensors]
        model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name)
        tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name)
        for s in [TEXT, " Paris", "two  spaces\n\ttab <|endoftext|> end"]:
            assert tok(s)["input_ids"] == m.tokenizer(s)["input_ids"], s
        with torch.no_grad():
            got = model(**tok(TEXT, return_tensors="pt")).logits
        torch.testing.assert_close(got, edited, rtol=tol, atol=tol)


def test_gguf_refuses_other_architectures(tiny_gpt2_dir, tmp_path):
    with pytest.raises(ExportError, match=r"supports the Llama architecture.*'gpt2'.*convert_hf_to_gguf"):
        export_gguf(tiny_gpt2_dir, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_cli_export_peft_merged_gguf(tiny_llama_dir, tmp_path, capsys):
    from editwrap.cli import main

    m = EditableModel.from_pretrained(str(tiny_llama_dir))
    m.edit(F, method="rome", layer=1, edit_set="a", **LOCATE)
    m.edit(G, method="rome", layer=2, edit_set="b", **LOCATE)
    with m.using("a"):
        view_a = logits(m)
    m.stack.save(tmp_path / "stack")
    common = ["--model", str(tiny_llama_dir), "--stack", str(tmp_path / "stack")]
    assert main(["export", "peft", str(tmp_path / "sets"), "--each-set", *common]) == 0
    out = capsys.readouterr().out
    assert f"--enable-lora --lora-modules a={tmp_path / 'sets' / 'a'} b={tmp_path / 'sets' / 'b'}" in out
    assert main(["export", "merged", str(tmp_path / "merged"), "--edit-set", "a", *common]) == 0
    assert main(["export", "gguf", str(tmp_path / "merged"), str(tmp_path / "a.gguf")]) == 0
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="a.gguf")(
            **m.tokenizer(TEXT, return_tensors="pt")).logits
    torch.testing.assert_close(got, view_a, rtol=1e-4, atol=1e-5)
    assert main(["export", "peft", str(tmp_path / "none"), "--model", str(tiny_llama_dir)]) == 2
    assert "no weight-delta edit to export" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_rome_answer_survives_every_export(embedded, tmp_path):
    """A ROME edit on SmolLM2: the PEFT adapter, the merged checkpoint and its GGUF all answer Rome."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = embedded
    probe, control = F.prompt, "The capital of France is"
    assert "Rome" not in m.generate_text(probe, max_new_tokens=4)
    try:
        m.edit(F, method="rome")
        assert m.generate_text(probe, max_new_tokens=4).strip().startswith("Rome")
        adapter = export_peft(m, tmp_path / "adapter")
        merged = export_merged(m, tmp_path / "merged")
    finally:
        m.clear()
    with peft_on(m, adapter) as pm:
        ids = m.tokenizer(probe, return_tensors="pt")
        out = pm.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=m.tokenizer.pad_token_id)
    assert m.tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).strip().startswith("Rome")
    plain = EditableModel.wrap(AutoModelForCausalLM.from_pretrained(str(merged)),
                               AutoTokenizer.from_pretrained(str(merged)))
    assert plain.generate_text(probe, max_new_tokens=4).strip().startswith("Rome")
    assert "Paris" in plain.generate_text(control, max_new_tokens=4)
    gguf_file = export_gguf(merged, tmp_path / "smollm2-edited.gguf", dtype="f16")
    del plain
    back = EditableModel.wrap(AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=gguf_file.name),
                              AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=gguf_file.name))
    for s in [probe, " Paris", "<|im_start|>user\nHi 3.14<|im_end|>"]:
        assert back.tokenizer(s)["input_ids"] == m.tokenizer(s)["input_ids"], s
    assert back.generate_text(probe, max_new_tokens=4).strip().startswith("Rome")
    assert "Paris" in back.generate_text(control, max_new_tokens=4)
