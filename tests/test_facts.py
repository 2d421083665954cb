"""Fact schema: normalisation, validation messages, JSON/JSONL loading."""
from __future__ import annotations

import json

import pytest

from editwrap import Fact, FactError, Probe, load_facts


def test_target_and_answers_are_stripped_prompt_kept():
    f = Fact(prompt="What river does Charity Creek connect to?", target_new=" Charity River",
             locality={"NQ": [Probe(prompt="q ", answer=" a ")]})
    assert f.target_new == "Charity River"
    assert f.locality["NQ"][0].answer == "a" and f.locality["NQ"][0].prompt == "q "


def test_placeholder_prompt_needs_subject():
    assert Fact(prompt="{} is in", subject="Paris", target_new="France").text_prompt == "Paris is in"
    with pytest.raises(ValueError, match="placeholder"):
        Fact(prompt="{} is in", target_new="France")


def test_unknown_field_is_rejected():
    with pytest.raises(ValueError, match="target"):
        Fact(prompt="a", target="b")


def test_load_facts_json_and_jsonl(tmp_path):
    rows = [{"prompt": "The capital of France is", "target_new": "Rome"},
            {"prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower", "target_new": "Rome"}]
    (tmp_path / "f.json").write_text(json.dumps(rows))
    (tmp_path / "f.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_facts(tmp_path / "f.json") == load_facts(tmp_path / "f.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x", "target_new": ""}) + "\n")
    with pytest.raises(FactError, match=r"(?s)bad.jsonl: record 0.*target_new"):
        load_facts(tmp_path / "bad.jsonl")
