"""``save_stack_dir(..., append=True)``: a save writes only what is new since the last one (one more
safetensors shard, committed by one line of ``edits.journal.jsonl``), a save cut before its line is
complete leaves the committed stack, and anything that is not a continuation is rewritten whole."""
from __future__ import annotations

import json

import pytest
import torch

import editwrap.stack as stack_mod
from editwrap import Fact
from editwrap.errors import StackError
from editwrap.ops.journal import JOURNAL, read_header
from editwrap.stack import FORMAT_VERSION, JOURNAL_FORMAT, load_stack_dir, save_stack_dir
from tests.test_core_stack import logits, random_delta

OTHER = Fact(prompt="The Colosseum is located in the city of", subject="Colosseum", target_new="Paris")


def _ids(m, path):
    return [e.id for e in load_stack_dir(path, m.fingerprint())]


def _journal(path):
    return [json.loads(x) for x in (path / JOURNAL).read_text().splitlines()] if (path / JOURNAL).exists() else []


def _disk_shards(path):
    return sorted(p.name for p in path.glob("*.safetensors"))


def test_appends_equal_a_full_save(tiny_llama, tmp_path):
    m, s, full = tiny_llama, tmp_path / "s", tmp_path / "full"
    for seed in range(3):
        m.push(random_delta(m, seed))
    save_stack_dir(m.stack.edits, s, m, append=True)  # nothing there yet: one file, ready for appends
    first = (s / "edits.safetensors").read_bytes()
    head = read_header(s / "edits.json")
    assert head["format_version"] == JOURNAL_FORMAT and head["count"] == 3 and not (s / JOURNAL).exists()
    m.edit(OTHER, method="lora", num_steps=2)  # an entry with its own files (entry-<i>/)
    m.push(random_delta(m, 7))
    save_stack_dir(m.stack.edits, s, m, append=True)
    m.push(random_delta(m, 8))
    save_stack_dir(m.stack.edits, s, m, append=True)
    save_stack_dir(m.stack.edits, s, m, append=True)  # nothing new: nothing written
    assert (s / "edits.safetensors").read_bytes() == first, "the saved edits were not rewritten"
    assert json.loads((s / "edits.json").read_text())["edits"] == json.loads(
        json.dumps([e.manifest() for e in m.stack.edits[:3]])), "edits.json keeps the records of the last rewrite"
    lines = _journal(s)
    assert [(x["count"], len(x["edits"]), x["shard"]) for x in lines] == [
        (5, 2, "edits-000003.safetensors"), (6, 1, "edits-000005.safetensors")]
    assert (s / "entry-3").is_dir()
    save_stack_dir(m.stack.edits, full, m)
    edited, ids = logits(m), [e.id for e in m.stack]
    loaded = load_stack_dir(s, m.fingerprint())
    assert [e.manifest() for e in loaded] == [e.manifest() for e in load_stack_dir(full, m.fingerprint())]
    m.clear()
    m.compose(s)
    assert [e.id for e in m.stack] == ids and torch.equal(logits(m), edited)
    m.clear()
    m.compose(full)
    assert torch.equal(logits(m), edited)


def test_pop_then_rewrite_compacts_and_keeps_foreign_files(tiny_llama, tmp_path):
    m, s = tiny_llama, tmp_path / "s"
    for seed in range(4):
        m.push(random_delta(m, seed))
        save_stack_dir(m.stack.edits, s, m, append=True)
    (s / "audit.jsonl").write_text('{"action": "push"}\n')
    assert len(_journal(s)) == 3
    m.pop()  # not a continuation: rewritten whole, in the journal's format, without a journal
    save_stack_dir(m.stack.edits, s, m, append=True)
    assert not (s / JOURNAL).exists() and _disk_shards(s) == ["edits.safetensors"]
    assert read_header(s / "edits.json")["format_version"] == JOURNAL_FORMAT
    assert (s / "audit.jsonl").read_text() == '{"action": "push"}\n'
    assert _ids(m, s) == [e.id for e in m.stack]
    # a plain save writes the first format (older editwrap reads it); the next append converts it once
    save_stack_dir(m.stack.edits, s, m)
    manifest = json.loads((s / "edits.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and "journal_id" not in manifest
    m.push(random_delta(m, 9))
    save_stack_dir(m.stack.edits, s, m, append=True)
    assert read_header(s / "edits.json")["format_version"] == JOURNAL_FORMAT and len(_journal(s)) == 1
    assert _ids(m, s) == [e.id for e in m.stack]


def test_torn_last_line_is_ignored_and_cut_by_the_next_append(tiny_llama, tmp_path):
    m, s = tiny_llama, tmp_path / "s"
    m.push(random_delta(m, 0))
    save_stack_dir(m.stack.edits, s, m, append=True)
    m.push(random_delta(m, 1))
    save_stack_dir(m.stack.edits, s, m, append=True)
    committed = [e.id for e in m.stack]
    m.push(random_delta(m, 2))
    save_stack_dir(m.stack.edits, s, m, append=True)
    j = s / JOURNAL
    raw = j.read_bytes()
    j.write_bytes(raw[:len(raw) - 40])  # a crash in the middle of writing the last line
    assert _ids(m, s) == committed
    m.push(random_delta(m, 3))
    save_stack_dir(m.stack.edits, s, m, append=True)  # appends edits 2 and 3 after the committed line
    assert _ids(m, s) == [e.id for e in m.stack]
    assert [x["count"] for x in _journal(s)] == [2, 4]


def test_crash_before_the_journal_line_leaves_an_orphan_shard(tiny_llama, tmp_path, monkeypatch):
    m, s = tiny_llama, tmp_path / "s"
    m.push(random_delta(m, 0))
    save_stack_dir(m.stack.edits, s, m, append=True)
    m.push(random_delta(m, 1))

    def crash(*a, **k):
        raise KeyboardInterrupt("killed after the shard, before the journal line")

    real = stack_mod.append_line
    monkeypatch.setattr(stack_mod, "append_line", crash)
    with pytest.raises(KeyboardInterrupt):
        save_stack_dir(m.stack.edits, s, m, append=True)
    monkeypatch.setattr(stack_mod, "append_line", real)
    assert _disk_shards(s) == ["edits-000001.safetensors", "edits.safetensors"]
    assert _ids(m, s) == [m.stack[0].id]  # the orphan shard is ignored
    m.pop()
    m.push(random_delta(m, 5))  # another edit at the same place
    save_stack_dir(m.stack.edits, s, m, append=True)  # replaces the orphan
    assert _disk_shards(s) == ["edits-000001.safetensors", "edits.safetensors"]
    edited, ids = logits(m), [e.id for e in m.stack]
    m.clear()
    m.compose(s)  # the new edit's tensors, not the orphan's
    assert [e.id for e in m.stack] == ids and torch.equal(logits(m), edited)
    with pytest.raises(KeyboardInterrupt):  # cut again; then a rewrite removes the orphan
        m.push(random_delta(m, 6))
        monkeypatch.setattr(stack_mod, "append_line", crash)
        save_stack_dir(m.stack.edits, s, m, append=True)
    monkeypatch.setattr(stack_mod, "append_line", real)
    assert "edits-000002.safetensors" in _disk_shards(s)
    save_stack_dir(m.stack.edits, s, m)
    assert _disk_shards(s) == ["edits.safetensors"] and _ids(m, s) == [e.id for e in m.stack]


def test_prefix_check_rewrites_when_ids_differ(tiny_llama, tmp_path):
    m, s = tiny_llama, tmp_path / "s"
    a, b, c, x, d = (random_delta(m, i) for i in range(5))
    save_stack_dir([a, b], s, m, append=True)
    save_stack_dir([a, b, c], s, m, append=True)
    assert len(_journal(s)) == 1
    # same count and same last id, another edit in the middle: not a continuation
    save_stack_dir([a, x, c, d], s, m, append=True)
    assert not (s / JOURNAL).exists() and _ids(m, s) == [a.id, x.id, c.id, d.id]
    save_stack_dir([a, x, c, d, b], s, m, append=True)
    save_stack_dir([b, a], s, m, append=True)  # fewer edits than saved: rewritten
    assert not (s / JOURNAL).exists() and _ids(m, s) == [b.id, a.id]


def test_newer_format_and_inconsistent_journal_are_refused(tiny_llama, tmp_path):
    m, s = tiny_llama, tmp_path / "s"
    m.push(random_delta(m, 0))
    save_stack_dir(m.stack.edits, s, m, append=True)
    m.push(random_delta(m, 1))
    save_stack_dir(m.stack.edits, s, m, append=True)
    line = _journal(s)[0]
    (s / JOURNAL).write_text(json.dumps({**line, "count": 7}) + "\n")
    with pytest.raises(StackError, match="line 1 ends the stack at 7 edits"):
        load_stack_dir(s, m.fingerprint())
    manifest = json.loads((s / "edits.json").read_text())
    (s / "edits.json").write_text(json.dumps({**manifest, "format_version": JOURNAL_FORMAT + 1}))
    with pytest.raises(StackError, match="newer editwrap"):
        load_stack_dir(s, m.fingerprint())
