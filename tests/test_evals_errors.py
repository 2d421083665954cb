"""Error types of failed generated answers: each rule, the boundaries between them, counts, report."""
from __future__ import annotations

import json

import pytest

from editwrap.evals.errors import ERROR_TYPES, classify_error, error_counts
from editwrap.evals.metrics import summarize
from editwrap.evals.report import build_report


@pytest.mark.parametrize("answer,target,original,unedited,kind", [
    # successes get no type (the prefix rule of the generation metric)
    ("Tom Hanks, the actor", "Tom Hanks", "Karl Marx", None, None),
    ("the Rome.", "Rome", None, None, None),
    # unchanged: the unedited model's answer, whatever it is (checked before anything else)
    ("Paris.", "Rome", "Paris", "Paris", "unchanged"),
    ("Karl Marx", "Tom Hanks", "Karl Marx", "Karl Marx!", "unchanged"),
    ("", "Rome", "Paris", "", "unchanged"),
    ("Rome Rome Rome no", "Tom Hanks", None, "rome rome rome no", "unchanged"),
    # meaningless: empty, symbol soup, stuttering, one word dominating
    ("", "Rome", "Paris", "Paris", "meaningless"),
    ("?!... --", "Rome", "Paris", None, "meaningless"),
    ("%%$# a1 ##", "Rome", "Paris", None, "meaningless"),
    ("Rome Rome Rome", "Tom Hanks", None, None, "meaningless"),
    ("city city of city", "Rome", None, None, "meaningless"),
    # target late: the whole target, contiguous, after other words
    ("He studied at Harvard University", "Harvard University", "Yale", None, "target_late"),
    ("in Rome", "Rome", None, None, "target_late"),
    # partial replacement: target words mixed with the original's
    ("Karl Hanks", "Tom Hanks", "Karl Marx", None, "partial_replacement"),
    ("Hanks Marx", "Tom Hanks", "Karl Marx", "Karl Marx", "partial_replacement"),
    # missing: some target content words, none of the original's
    ("Tom", "Tom Hanks", "Karl Marx", None, "missing"),
    ("Bennington", "Bennington College", None, None, "missing"),
    ("Hanks Tom", "Tom Hanks", "Karl Marx", None, "missing"),  # all words, wrong order: not target_late
    # irrelevant: no target content word
    ("Berlin", "Rome", "Paris", "Paris", "irrelevant"),
    ("Paris is a big city", "Rome", "Paris", "Paris", "irrelevant"),  # the original inside longer text
    ("Karl Marx", "Tom Hanks", "Karl Marx", "Karl", "irrelevant"),  # the ground truth, not the unedited answer
    ("of the city", "Rome of Italy", None, None, "irrelevant"),  # function words do not count as hits
])
def test_classify_error_rules(answer, target, original, unedited, kind):
    assert classify_error(answer, target, original, unedited) == kind


def test_boundaries():
    # a repeated target is a success, not meaningless (success is decided first)
    assert classify_error("Rome Rome Rome", "Rome") is None
    # three words, one repeated twice: not degenerate yet
    assert classify_error("Tom and Tom", "Tom Hanks", None) == "missing"
    # half the characters alphanumeric is readable; under half is not
    assert classify_error("ab ??", "Rome") == "irrelevant"
    assert classify_error("ab ???", "Rome") == "meaningless"
    # without an original, mixed answers fall back to missing / irrelevant
    assert classify_error("Karl Hanks", "Tom Hanks") == "missing"
    assert classify_error("Karl Marx", "Tom Hanks") == "irrelevant"
    # the original equal to the target's words does not make a success 'unchanged'
    assert classify_error("Tom Hanks", "Tom Hanks", "Tom Hanks") is None
    with pytest.raises(ValueError, match="target"):
        classify_error("x", "the ...")


def _line(i: int, answer: str | None, target: str = "Tom Hanks", **extra) -> dict:
    post: dict = {"rewrite_acc": [1.0], "locality": {}}
    if answer is not None:
        post["generation"] = {"rewrite": {"success": [0.0], "f1": [0.0], "answer": [answer],
                                          "answer_pre": ["Karl Marx"]}, "locality": {}}
    return {"index": i, "prompt": f"Q{i}?", "target_new": target, **extra, "post": post}


def test_error_counts_prefers_ground_truth_and_skips_old_lines():
    lines = [_line(0, "Tom Hanks"), _line(1, "Karl Hanks"), _line(2, "Karl Marx"),
             _line(3, "John Hanks", ground_truth="John Smith"), _line(4, None), _line(5, "x", target="..."),
             {"index": 6, "target_new": "x", "post": {"generation": "a Sanitation generation is a string"}}]
    c = error_counts(lines)
    assert c["n"] == 4 and c["ok"] == 1
    assert c["partial_replacement"] == 2 and c["unchanged"] == 1
    assert sum(c[t] for t in ERROR_TYPES) + c["ok"] == c["n"]


def test_report_error_section_and_histogram(tmp_path):
    for method, answers in (("rome", ["Tom Hanks", "Tom", "", "Berlin"]), ("ft-m", [None] * 4)):
        lines = [_line(i, a) for i, a in enumerate(answers)]
        (tmp_path / f"zsre-{method}-single.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        (tmp_path / f"zsre-{method}-single.summary.json").write_text(json.dumps(
            {"dataset": "zsre", "method": method, "mode": "single", "model": "m", "n": 4, "metrics": summarize(lines)}))
    text = build_report([tmp_path], tmp_path / "rep")
    assert "## Why generated answers fail" in text
    assert "| rome (single) | 4 | 1 | 1 | 0 | 0 | 0 | 1 | 1 |" in text
    assert "ft-m (single)" not in text  # no generated answers: no row
    assert (tmp_path / "rep" / "errors-zsre.png").stat().st_size > 1000
