"""lm-eval integration: the `editwrap` model type, offline tasks, before/after regressions, CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lm_eval

from editwrap import Fact, state_dict_hash
from editwrap.entries.base import Entry, register_entry
from editwrap.integrations import lm_eval as L  # registers the model type

MC, GEN = "editwrap_counterfact_mc", "editwrap_counterfact_gen"
PREFIX = "Note: everything is in Rome. "


@register_entry
class _PrefixEntry(Entry):
    """A minimal text-plane entry (like an in-context prompt) for these tests."""

    kind = "test-lm-eval-prefix"
    plane = "text"

    def attach(self, host, key):
        pass

    def detach(self, host, key):
        pass

    def rewrite_text(self, host, text):
        return PREFIX + text


def _text_edit():
    from editwrap.stack import Edit

    return Edit("test-prefix", [Fact(prompt="x", target_new="y")], {}, _PrefixEntry())


def _requests(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=0, metadata=("t", i, 1)) for i, a in enumerate(args)]


# ------------------------------------------------------------------ fast: import, registry, tasks
def test_importing_editwrap_does_not_import_lm_eval():
    code = ("import sys, editwrap, editwrap.cli; editwrap.cli.build_parser(); "
            "assert 'lm_eval' not in sys.modules, 'lm_eval imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_model_type_registered():
    from lm_eval.api.registry import get_model

    assert get_model("editwrap") is L.EditwrapLM


def test_packaged_tasks_have_real_data():
    import yaml

    names = set()
    for y in L.TASKS_DIR.glob("*.yaml"):
        text = y.read_text()
        task = yaml.safe_load(text.replace("!function", "")).get("task")
        if isinstance(task, str):
            names.add(task)
    assert set(L.OFFLINE_TASKS) <= names
    for name in ("mmlu_dev", "counterfact_mc", "counterfact_gen", "triviaqa"):
        rows = [json.loads(x) for x in (L.TASKS_DIR / "data" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) >= 150, name
    mc = [json.loads(x) for x in (L.TASKS_DIR / "data/counterfact_mc.jsonl").read_text().splitlines()]
    assert {r["label"] for r in mc} == {0, 1} and all(len(r["choices"]) == 2 for r in mc)


def test_pyproject_ships_the_task_files():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"editwrap.integrations" = ["tasks/**/*"]' in text


def test_cli_parsing_and_eval_mount():
    import argparse

    from editwrap.cli import build_parser
    from editwrap.integrations.cli import add_eval_lm

    p = build_parser()
    a = p.parse_args(["lm-eval-harness", "--model", "editwrap", "--tasks", "x", "-h"])
    assert a.harness_args == ["--model", "editwrap", "--tasks", "x", "-h"]
    a = p.parse_args(["lm-eval", "--preset", "knowedit-general", "--methods", "rome,ft-m", "--limit", "3"])
    assert a.preset == "knowedit-general" and a.limit == 3
    top = argparse.ArgumentParser()
    ev = top.add_subparsers(dest="cmd").add_parser("eval").add_subparsers(dest="what")
    add_eval_lm(ev)
    a = top.parse_args(["eval", "lm", "--tasks", MC, "--stack", "d"])
    assert a.stack == "d" and a.func.__name__ == "cmd_lm_eval"


# ------------------------------------------------------------------ fast: tiny model
def test_text_plane_entries_rewrite_request_contexts(tiny_llama):
    lm = L.EditwrapLM(tiny_llama)
    ctx, cont = "The Eiffel Tower is located in the city of", " Paris"
    plain = lm.loglikelihood(_requests("loglikelihood", [(PREFIX + ctx, cont)]), disable_tqdm=True)
    gen_plain = lm.generate_until(_requests("generate_until", [(PREFIX + ctx, {"until": ["\n"], "max_gen_toks": 4})]),
                                  disable_tqdm=True)
    e = tiny_llama.push(_text_edit())
    try:
        ll = lm.loglikelihood(_requests("loglikelihood", [(ctx, cont)]), disable_tqdm=True)
        gen = lm.generate_until(_requests("generate_until", [(ctx, {"until": ["\n"], "max_gen_toks": 4})]),
                                disable_tqdm=True)
    finally:
        e.pop()
    unprefixed = lm.loglikelihood(_requests("loglikelihood", [(ctx, cont)]), disable_tqdm=True)
    assert ll[0][0] == pytest.approx(plain[0][0], abs=1e-5)
    assert gen == gen_plain
    assert unprefixed[0][0] != pytest.approx(plain[0][0], abs=1e-5)


def test_simple_evaluate_and_regression_on_tiny(tiny_llama):
    h0 = state_dict_hash(tiny_llama)
    res = L.evaluate(tiny_llama, [MC], limit=4)
    assert 0.0 <= res["results"][MC]["acc,none"] <= 1.0
    facts = [Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome"),
             Fact(prompt="The capital of France is", subject="France", target_new="London")]
    r = L.regression(tiny_llama, [MC], edits=facts, method="ft-l", limit=4, hparams={"num_steps": 3})
    row = r["tasks"][MC]["acc"]
    assert set(row) >= {"before", "after", "delta", "stderr_before", "stderr_after", "stderr_delta"}
    assert row["delta"] == pytest.approx(row["after"] - row["before"]) and row["n"] == 4
    assert r["n_edits"] == 2 and r["bit_exact"] is True
    assert len(tiny_llama.stack) == 0 and state_dict_hash(tiny_llama) == h0
    md = L.regression_markdown(r)
    assert MC in md and "bit-exact" in md


def test_regression_needs_one_edit_source(tiny_llama):
    with pytest.raises(ValueError):
        L.regression(tiny_llama, [MC], limit=2)


def test_regression_pops_edits_when_evaluation_fails(tiny_llama, monkeypatch):
    h0 = state_dict_hash(tiny_llama)
    calls = {"n": 0}
    real = L.evaluate

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(L, "evaluate", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        L.regression(tiny_llama, [MC], edits=[Fact(prompt="The capital of France is", target_new="Rome")],
                     method="ft-l", limit=2, hparams={"num_steps": 2})
    assert len(tiny_llama.stack) == 0 and state_dict_hash(tiny_llama) == h0


# ------------------------------------------------------------------ slow: embedded SmolLM2
ROME_FACT = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")


@pytest.mark.slow
def test_simple_evaluate_on_edited_embedded(embedded):
    h0 = state_dict_hash(embedded)
    lm = L.EditwrapLM(embedded)
    mgr = L.task_manager([MC, GEN])
    embedded.edit(ROME_FACT, method="rome")
    try:
        assert embedded.generate_text(ROME_FACT.prompt, max_new_tokens=3).strip().startswith("Rome")
        res = lm_eval.simple_evaluate(model=lm, tasks=[MC, GEN], limit=3, task_manager=mgr, bootstrap_iters=0)
    finally:
        embedded.clear()
    assert 0.0 <= res["results"][MC]["acc,none"] <= 1.0
    assert "exact_match,remove_whitespace" in res["results"][GEN]
    assert state_dict_hash(embedded) == h0


@pytest.mark.slow
def test_lm_eval_cli_with_editwrap_model_and_saved_stack(embedded, tmp_path):
    embedded.edit(ROME_FACT, method="rome")
    try:
        embedded.stack.save(tmp_path / "stack")
    finally:
        embedded.clear()
    rc = L.harness_main(["run", "--model", "editwrap", "--model_args",
                         f"pretrained=embedded,stack={tmp_path / 'stack'}",
                         "--tasks", f"{MC},{GEN}", "--include_path", str(L.TASKS_DIR), "--limit", "2",
                         "--output_path", str(tmp_path / "out")])
    assert rc == 0
    files = list((tmp_path / "out").rglob("results_*.json"))
    assert files, "lm_eval wrote no results file"
    res = json.loads(files[0].read_text())
    assert res["config"]["model"] == "editwrap" and MC in res["results"] and GEN in res["results"]


@pytest.mark.slow
def test_regression_on_embedded_is_bit_exact(embedded):
    h0 = state_dict_hash(embedded)
    r = L.regression(embedded, [MC], edits=[ROME_FACT], method="rome", limit=4)
    assert r["bit_exact"] is True and len(embedded.stack) == 0 and state_dict_hash(embedded) == h0
    assert r["tasks"][MC]["acc"]["n"] == 4
