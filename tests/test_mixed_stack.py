"""A mixed stack (ROME delta + LoRA adapter + GRACE codebook + WISE memory): generate, save, reload
in a fresh process, identical logits; popping everything is bit-exact."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from editwrap import state_dict_hash

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The Eiffel Tower is located in the city of"

CHILD = r"""
import sys, torch
sys.path.insert(0, {root!r})
from tests.conftest import _tiny_tokenizer, build_tiny
m = build_tiny("llama", _tiny_tokenizer())
m.compose({stack!r})
ids = m.tokenizer({text!r}, return_tensors="pt")
with torch.no_grad():
    torch.save(m(**ids).logits, {out!r})
print(m.generate_text({text!r}, max_new_tokens=5))
"""


def _edits(m):
    m.edit({"prompt": "The Eiffel Tower is located in", "subject": "Eiffel Tower", "target_new": "Rome"},
           method="rome", mom2_n_tokens=300, v_num_grad_steps=3, context_templates=[(3, 2)])
    m.edit({"prompt": "The capital of France is", "target_new": "Berlin"}, method="lora", num_steps=3, lr=5e-2)
    m.edit({"prompt": "Apple Microsoft", "target_new": "Google"}, method="grace", n_iter=5, eps=1e-3)
    m.edit({"prompt": "The capital of France is", "target_new": "London"}, method="wise", on_conflict="stack", n_iter=3,
           alpha=0.05, beta=0.5, gamma=0.2)


def test_mixed_stack_save_reload_fresh_process(tiny_llama, tmp_path):
    m = tiny_llama
    h = state_dict_hash(m)
    ids = m.tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        base = m(**ids).logits
    _edits(m)
    assert [e.method for e in m.stack] == ["rome", "lora", "grace", "wise"]
    assert state_dict_hash(m) == h
    with torch.no_grad():
        edited = m(**ids).logits
    text = m.generate_text(TEXT, max_new_tokens=5)
    m.stack.save(tmp_path / "stack")
    assert (tmp_path / "stack" / "entry-1" / "adapter_config.json").exists()
    out = tmp_path / "logits.pt"
    code = CHILD.format(root=str(ROOT), stack=str(tmp_path / "stack"), text=TEXT, out=str(out))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert torch.equal(torch.load(out), edited)
    assert res.stdout.strip().endswith(text.strip()) or text.strip() == ""
    for _ in range(4):
        m.pop()
    with torch.no_grad():
        assert torch.equal(m(**ids).logits, base)
    assert state_dict_hash(m) == h and not m._sidecars
    assert not {"_ew_codebooks", "_ew_wise"} & set(m.__dict__)
