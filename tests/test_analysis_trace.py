"""Causal tracing (editwrap.analysis.trace) on tiny models whose fact path is known by construction."""
from __future__ import annotations

import json

import pytest
import torch

from editwrap.analysis.trace import causal_trace, subject_range
from editwrap.arch import arch_of

from .conftest import build_tiny

PROMPT, SUBJECT = "Paris is the capital of", "the"  # the subject is one token (index 3) of the tiny tokenizer
K = 2  # the only layer whose attention moves information between tokens


def one_path_model(kind: str, tok):
    """A tiny model where the subject reaches the last token only through layer K's attention.

    Every other layer's attention output projection is zero, so before layer K each position
    depends on its own token only. Amplifying layer K's attention and the final norm makes the
    answer probability depend clearly on the subject. Then, exactly: restoring the subject's
    hidden state below K, or the last token's at K and above, gives back the clean probability;
    every other single restoration leaves the corrupted one.
    """
    m = build_tiny(kind, tok)
    arch = arch_of(m)
    with torch.no_grad():
        m.get_submodule(arch.final_norm).weight.mul_(30)
        for layer in range(arch.n_layers):
            w = m.get_submodule(arch.attn_out_at(layer)).weight
            w.mul_(30) if layer == K else w.zero_()
    return m


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_restoring_the_known_layer_restores_the_answer(kind, tiny_tokenizer):
    m = one_path_model(kind, tiny_tokenizer)
    r = causal_trace(m, PROMPT, SUBJECT, samples=3, window=2)
    assert r["subject_range"] == [3, 4] and r["tokens"][3] == "Ġthe"
    hi, lo = r["p_clean"], r["p_corrupted"]
    assert hi - lo > 0.1  # the noise on the subject matters
    close = lambda a, b: abs(a - b) < 2e-6  # noqa: E731  (values are rounded to 6 decimals)
    hidden, attn = r["restored"]["hidden"], r["restored"]["attn"]
    n_layers, last = r["n_layers"], len(r["tokens"]) - 1
    for t, row in enumerate(hidden):
        for layer, p in enumerate(row):
            want = hi if (t == 3 and layer < K) or (t == last and layer >= K) else lo
            assert close(p, want), (t, layer, p, want)
    # the last layer's state at the last token decides the output: exactly the clean probability
    assert close(hidden[last][n_layers - 1], hi)
    # attention windows of 2 layers centred on l restore layers [l-1, l+1): those holding K restore
    assert [close(p, hi) for p in attn[last]] == [K in range(max(0, c - 1), c + 1) for c in range(n_layers)]
    assert all(close(p, lo) for t in range(3) for p in attn[t] + r["restored"]["mlp"][t])
    ie = r["indirect_effect"]["hidden"]
    assert close(ie[last][K], hi - lo) and r["peak"]["hidden"]["effect"] == pytest.approx(hi - lo, abs=2e-6)


def test_noise_only_touches_the_subject_and_target_answer(tiny_tokenizer):
    m = build_tiny("llama", tiny_tokenizer)
    r = causal_trace(m, PROMPT, SUBJECT, target="Paris", samples=2, window=3, kinds=("hidden",))
    assert r["answer_from"] == "target" and r["answer_id"] == tiny_tokenizer(" Paris")["input_ids"][0]
    assert list(r["restored"]) == ["hidden"]
    # tokens before the subject never see the noise (causal attention): restoring them is a no-op
    assert all(abs(p - r["p_corrupted"]) < 2e-6 for t in range(3) for p in r["restored"]["hidden"][t])
    a = causal_trace(m, PROMPT, SUBJECT, samples=2, kinds=("hidden",), seed=1)
    b = causal_trace(m, PROMPT, SUBJECT, samples=2, kinds=("hidden",), seed=1, batch_rows=5)
    assert a["restored"] == b["restored"]  # batching does not change the numbers (beyond rounding)


def test_subject_range_and_errors(tiny_tokenizer):
    assert subject_range(tiny_tokenizer, "The Eiffel Tower is located in", "Eiffel Tower") == (2, 11)
    with pytest.raises(ValueError, match="not in prompt"):
        subject_range(tiny_tokenizer, PROMPT, "Rome")
    m = build_tiny("gpt2", tiny_tokenizer)
    with pytest.raises(ValueError, match="unknown trace kinds"):
        causal_trace(m, PROMPT, SUBJECT, kinds=("mlp", "neurons"))


def test_cli_writes_json_and_png(tiny_gpt2_dir, tmp_path, capsys):
    from editwrap.cli import main

    out = tmp_path / "trace"
    rc = main(["analyze", "trace", "--model", str(tiny_gpt2_dir), "--prompt", PROMPT, "--subject", "capital",
               "--samples", "2", "--window", "3", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "trace.json").read_text())
    n_tok = len(res["tokens"])
    for k in ("hidden", "mlp", "attn"):
        assert len(res["indirect_effect"][k]) == n_tok and all(len(row) == 4 for row in res["indirect_effect"][k])
    assert res["modules"]["mlp"] == "transformer.h.{}.mlp.c_proj" and res["samples"] == 2
    assert res["noise_std"] > 0 and 0 <= res["p_corrupted"] <= 1
    assert (out / "trace.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out
