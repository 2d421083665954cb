"""MEND: editor network, training with checkpoints/resume, edits as exact low-rank delta entries."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from editwrap import Fact, Probe, state_dict_hash
from editwrap.entries.delta import DeltaEntry
from editwrap.methods.mend.hparams import MendTrainConfig
from editwrap.methods.mend import MendEditor, train_mend
from editwrap.methods.mend.model import grad_taps, encode_edit

from .conftest import KNOWEDIT_DIR, build_tiny

RECORDS = [
    Fact(prompt=f"The {a} of {s} is", target_new=t, rephrase=[f"{s}'s {a} is"],
         locality={"neighborhood": [Probe(prompt=f"The capital of {c} is", answer=c2)]})
    for a, s, t, c, c2 in [
        ("capital", "France", "Rome", "Germany", "Berlin"), ("language", "Brazil", "French", "Italy", "Rome"),
        ("city", "Apple", "London", "Spain", "Madrid"), ("tower", "Paris", "Berlin", "Japan", "Tokyo"),
        ("river", "London", "Paris", "Peru", "Lima"), ("company", "Google", "Microsoft", "Egypt", "Cairo"),
    ]
]
FACT = Fact(prompt="The Eiffel Tower is located in the city of", target_new="Rome")


def _cfg(**kw):
    base = dict(layers=[2, 3], rank=4, steps=6, batch_size=2, save_every=2, seed=0, lr=1e-2, lr_lr=1e-1)
    return MendTrainConfig(**{**base, **kw})


def _editor_state(out):
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "editor.safetensors"))


def test_grad_taps_match_weight_gradient(tiny_llama):
    """Σ_t δ_t x_tᵀ from the taps equals the autograd gradient of the weight (MEND's premise)."""
    m = tiny_llama
    name = "model.layers.2.mlp.down_proj"
    enc, labels = encode_edit(m.tokenizer, [FACT.prompt, "The capital of France is"], ["Rome", "Paris"], "cpu")
    x, d = grad_taps(m, [name], enc, labels)[name]
    from editwrap.methods.mend.model import nll

    w = m.get_submodule(name).weight
    m.zero_grad()
    nll(m(**enc).logits, labels).backward()
    assert torch.allclose(d.T @ x, w.grad, atol=1e-6)
    m.zero_grad()
    assert all(p.grad is None or not p.grad.any() for p in m.parameters())


def test_untrained_editor_is_identity_and_factors_shape():
    ed = MendEditor(["a"], [(5, 7)], rank=3, init_lr=0.5)
    x, d = torch.randn(4, 7), torch.randn(4, 5)
    U, V = ed.factors({"a": (x, d)})["a"]
    assert U.shape == (5, 4) and V.shape == (7, 4)
    assert torch.allclose(U @ V.T, -0.5 * d.T @ x, atol=1e-5)  # identity transform before training


def test_train_edit_pop_save_load(tiny_model, tmp_path):
    m = tiny_model
    h0 = state_dict_hash(m)
    info = train_mend(m, RECORDS, tmp_path / "ed", _cfg(), progress=False)
    assert info["finished"] and info["steps_done"] == 6 and info["n_records"] == 6
    assert (tmp_path / "ed" / "editor.json").is_file() and (tmp_path / "ed" / "checkpoint" / "state.json").is_file()
    meta = json.loads((tmp_path / "ed" / "editor.json").read_text())
    assert meta["info"]["train_seconds"] >= 0 and "cpu_peak_rss_mb" in meta["info"]
    assert state_dict_hash(m) == h0, "training must not touch the model"
    ll0 = m.loglikelihood(FACT.prompt, " Rome")
    e = m.edit(FACT, method="mend", editor=str(tmp_path / "ed"))
    assert isinstance(e.entry, DeltaEntry) and all(set(p) == {"U", "V"} for p in e.entry.parts.values())
    assert len(e.entry.parts) == 2
    ll1 = m.loglikelihood(FACT.prompt, " Rome")
    assert ll1 != ll0
    # composes with a prompt entry and an FT entry, saves and reloads
    m.edit(FACT, method="ice", on_conflict="stack")
    m.stack.save(tmp_path / "stack")
    m.clear()
    assert state_dict_hash(m) == h0 and m.loglikelihood(FACT.prompt, " Rome") == ll0
    m.compose(tmp_path / "stack")
    m.pop()
    assert m.loglikelihood(FACT.prompt, " Rome") == pytest.approx(ll1, abs=1e-5)
    m.pop()
    assert state_dict_hash(m) == h0 and m.loglikelihood(FACT.prompt, " Rome") == ll0


def test_resume_after_interruption_matches_uninterrupted(tiny_llama, tmp_path):
    m = tiny_llama
    train_mend(m, RECORDS, tmp_path / "full", _cfg(), progress=False)
    part = train_mend(m, RECORDS, tmp_path / "cut", _cfg(), progress=False, stop_after=3)  # "killed" after step 3
    assert not part["finished"] and not (tmp_path / "cut" / "editor.safetensors").exists()
    ck = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert ck["step"] == 2  # last checkpoint before the interruption; step 3 is redone
    done = train_mend(m, RECORDS, tmp_path / "cut", _cfg(), progress=False)
    assert done["finished"] and done["steps_done"] == 6
    a, b = _editor_state(tmp_path / "full"), _editor_state(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k
    # resuming with other settings is refused; --no-resume starts over
    with pytest.raises(ValueError, match="other training settings"):
        train_mend(m, RECORDS, tmp_path / "cut", _cfg(rank=5), progress=False)
    with pytest.raises(ValueError, match="different data_hash"):
        train_mend(m, RECORDS[:3], tmp_path / "cut", _cfg(), progress=False)


def test_bad_inputs(tiny_tokenizer, tmp_path):
    llama = build_tiny("llama", tiny_tokenizer)
    with pytest.raises(ValueError, match="trained editor"):
        llama.edit(FACT, method="mend")
    with pytest.raises(FileNotFoundError, match="not a trained MEND editor"):
        llama.edit(FACT, method="mend", editor=str(tmp_path))
    with pytest.raises(ValueError, match="at least one edit record"):
        train_mend(llama, [], tmp_path / "x", _cfg())
    with pytest.raises(ValueError, match="out of range"):
        train_mend(llama, RECORDS, tmp_path / "x", _cfg(layers=[9]))
    train_mend(llama, RECORDS, tmp_path / "ed", _cfg(steps=1), progress=False)
    gpt2 = build_tiny("gpt2", tiny_tokenizer)
    with pytest.raises(ValueError, match="does not have|expects"):
        gpt2.edit(FACT, method="mend", editor=str(tmp_path / "ed"))
    assert len(gpt2.stack) == 0 and len(llama.stack) == 0


def _cli(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "editwrap.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow  # three CLI processes (~1 min alone, more on a busy machine)
def test_cli_train_killed_and_resumed(tiny_tokenizer, tmp_path):
    """A real SIGKILL mid-run, then the same command resumes and matches an uninterrupted run."""
    model_dir = tmp_path / "tiny"
    build_tiny("llama", tiny_tokenizer).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    data = tmp_path / "data.json"
    data.write_text(json.dumps([f.to_json() for f in RECORDS]))
    common = ["train", "mend", "--model", str(model_dir), "--data", str(data), "--layers", "2", "3", "--rank", "4",
              "--steps", "40", "--batch-size", "2", "--save-every", "5", "--lr", "1e-2"]
    p = _cli(common + ["--out", str(tmp_path / "full")])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    p = _cli(common + ["--out", str(tmp_path / "cut")])
    ck = tmp_path / "cut" / "checkpoint" / "state.json"
    t0 = time.time()
    while not ck.exists() and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "cut" / "editor.safetensors").exists(), "killed too late to test resumption"
    p = _cli(common + ["--out", str(tmp_path / "cut")])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    a, b = _editor_state(tmp_path / "full"), _editor_state(tmp_path / "cut")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k


@pytest.mark.slow
def test_mend_embedded_trained_short(embedded, tmp_path):
    """A short real training run on ZsRE train records lifts the target's likelihood after an edit."""
    from editwrap.evals.datasets import load_dataset

    recs = load_dataset(None, KNOWEDIT_DIR / "zsre_mend_train.json")  # 20 MEND-format zsRE train records
    h0 = state_dict_hash(embedded)
    info = train_mend(embedded, recs, tmp_path / "ed", MendTrainConfig(steps=12, batch_size=2, save_every=6,
                                                                        lr=1e-3, lr_lr=5e-2), progress=False)
    assert info["finished"] and state_dict_hash(embedded) == h0
    f = load_dataset("zsre", KNOWEDIT_DIR / "ZsRE.json", n=1)[0]
    ll0 = embedded.loglikelihood(f.prompt, " " + f.target_new)
    with embedded.edit(f, method="mend", editor=str(tmp_path / "ed")):
        ll1 = embedded.loglikelihood(f.prompt, " " + f.target_new)
    assert ll1 > ll0 and state_dict_hash(embedded) == h0
