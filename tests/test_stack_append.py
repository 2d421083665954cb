"""``save_stack_dir(..., append=True)``: a long sequential run saves only what is new since its last
save (one more safetensors shard), and a save cut before its manifest commits leaves the old stack."""
from __future__ import annotations

import json
import os

import pytest
import torch

from editwrap.stack import load_stack_dir, save_stack_dir
from editwrap import Fact
from tests.test_core_stack import logits, random_delta

OTHER = Fact(prompt="The Colosseum is located in the city of", subject="Colosseum", target_new="Paris")


def _edits(m, path):
    return load_stack_dir(path, m.fingerprint())


def test_append_writes_only_new_edits_and_reloads_the_same_stack(tiny_llama, tmp_path):
    m, s = tiny_llama, tmp_path / "s"
    for seed in range(3):
        m.push(random_delta(m, seed))
    save_stack_dir(m.stack.edits, s, m, append=True)  # nothing there yet: one file, format 1
    first = (s / "edits.safetensors").read_bytes()
    assert json.loads((s / "edits.json").read_text())["format_version"] == 1
    m.edit(OTHER, method="lora", num_steps=2)  # an entry with its own files (entry-<i>/)
    m.push(random_delta(m, 7))
    save_stack_dir(m.stack.edits, s, m, append=True)
    manifest = json.loads((s / "edits.json").read_text())
    assert (s / "edits.safetensors").read_bytes() == first, "the saved edits were not rewritten"
    assert manifest["format_version"] == 2 and len(manifest["shards"]) == 2 and len(manifest["edits"]) == 5
    assert (s / "entry-3").is_dir()
    edited = logits(m)
    ids = [e.id for e in m.stack]
    m.clear()
    m.compose(s)
    assert [e.id for e in m.stack] == ids and torch.equal(logits(m), edited)
    # a stack that is not a continuation (an edit popped) is rewritten whole, as one file
    m.pop()
    m.pop()
    save_stack_dir(m.stack.edits, s, m, append=True)
    manifest = json.loads((s / "edits.json").read_text())
    assert manifest["format_version"] == 1 and "shards" not in manifest
    assert sorted(p.name for p in s.glob("*.safetensors")) == ["edits.safetensors"]
    assert len(_edits(m, s)) == 3


def test_append_cut_before_commit_keeps_the_old_stack(tiny_llama, tmp_path, monkeypatch):
    m, s = tiny_llama, tmp_path / "s"
    m.push(random_delta(m, 0))
    save_stack_dir(m.stack.edits, s, m, append=True)
    m.push(random_delta(m, 1))
    real = os.replace

    def crash(src, dst):
        if str(dst).endswith("edits.json"):
            raise KeyboardInterrupt("killed before the manifest was replaced")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_stack_dir(m.stack.edits, s, m, append=True)
    monkeypatch.setattr(os, "replace", real)
    assert [e.id for e in _edits(m, s)] == [m.stack[0].id]  # the orphan shard is ignored
    assert not list(s.glob(".edits.json.tmp-*")), "the uncommitted manifest is not left behind"
    m.push(random_delta(m, 2))
    save_stack_dir(m.stack.edits, s, m, append=True)  # the next save commits and removes the orphan
    assert [e.id for e in _edits(m, s)] == [e.id for e in m.stack]
    assert len(list(s.glob("edits-*.safetensors"))) == 1
