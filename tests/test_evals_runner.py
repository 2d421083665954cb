"""KnowEdit runner: modes, resume after interruption, locality pre/post, bit-exact pops, report, CLI."""
from __future__ import annotations

import json

import pytest
import torch

from editwrap import state_dict_hash
from editwrap.evals import answer_tokens, locality_score, run_knowedit
from editwrap.evals.datasets import load_dataset
from editwrap.evals.measure import Scorer
from editwrap.evals.report import build_report, paper_rows
from editwrap.evals.resultlog import ResultLog
from editwrap.evals.runner import load_records
from tests.conftest import KNOWEDIT_DIR, interrupt_edit

ZSRE = KNOWEDIT_DIR / "ZsRE.json"
HP = {"num_steps": 2}
STRONG = {"num_steps": 8, "lr": 0.05, "early_stop_loss": 0.0}  # big enough to move the tiny model's argmax


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _run(model, out, **kw):
    kw = {"dataset": "zsre", "data": ZSRE, "method": "ft-m", "n": 5, "hparams": HP, "out": out,
          "progress": False, **kw}
    return run_knowedit(model, **kw)


@pytest.mark.parametrize("mode", ["single", "batch", "sequential"])
def test_each_mode_writes_jsonl_summary_table(tiny_llama, tmp_path, mode):
    h0 = state_dict_hash(tiny_llama)
    s = _run(tiny_llama, tmp_path, mode=mode, batch_size=2, checkpoints=[2, 4])
    stem = f"zsre-ft-m-{mode}"
    lines = _lines(tmp_path / f"{stem}.jsonl")
    if mode == "sequential":
        assert sorted((r["checkpoint"], r["index"]) for r in lines) == \
            [(c, i) for c in (2, 4, 5) for i in range(c)]
        assert s["bit_exact"] is True and set(s["checkpoints"]) == {"2", "4", "5"}
        assert (tmp_path / f"{stem}.png").stat().st_size > 1000
        assert (tmp_path / "sequential-zsre.png").exists()
    else:
        assert sorted(r["index"] for r in lines) == list(range(5))
        assert s["edits_computed"] == (3 if mode == "batch" else 5)
        assert {r["batch"] for r in lines} == ({2, 1} if mode == "batch" else {1})
        assert all(r["pop_exact"] is True for r in lines) and s["bit_exact"] is True
    assert state_dict_hash(tiny_llama) == h0 and len(tiny_llama.stack) == 0
    summ = json.loads((tmp_path / f"{stem}.summary.json").read_text())
    assert summ["n"] == 5 and summ["wall_seconds"] > 0 and summ["metrics"]["n"] == 5
    for key in ("Edit Succ.", "Portability", "Locality"):
        assert 0 <= summ["metrics"][key] <= 100
    table = (tmp_path / f"{stem}.md").read_text()
    assert ("| metric | ft-m ×2/edit |" if mode == "sequential" else "| metric | ft-m |") in table
    assert "| Edit Succ. |" in table and "| Locality |" in table
    assert f"ZsRE — {mode}" in (tmp_path / "report.md").read_text()


def test_inexact_pop_is_reported(tiny_llama, tmp_path, monkeypatch):
    """A pop that does not restore the model shows up per line and fails the summary."""
    real_pop = type(tiny_llama).pop

    def leaky_pop(self, *a, **kw):
        out = real_pop(self, *a, **kw)
        with torch.no_grad():
            next(self.parameters()).view(-1)[0] += 1e-3
        return out

    monkeypatch.setattr(type(tiny_llama), "pop", leaky_pop)
    s = _run(tiny_llama, tmp_path, mode="single")
    assert s["bit_exact"] is False
    assert [r["pop_exact"] for r in _lines(tmp_path / "zsre-ft-m-single.jsonl")] == [False] * 5


def _interrupt_after(monkeypatch, k):
    """Interrupt the scoring call that would measure more than ``k`` records in all; sequential
    checkpoints are scored 2 records at a time (sequential.SCORE_CHUNK), so a checkpoint can be
    cut in the middle."""
    from editwrap.evals import sequential

    calls = {"n": 0}
    real = Scorer.post_many
    monkeypatch.setattr(sequential, "SCORE_CHUNK", 2)

    def post_many(self, items, pres):
        if calls["n"] + len(items) > k:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += len(items)
        return real(self, items, pres)

    monkeypatch.setattr(Scorer, "post_many", post_many)
    return lambda: monkeypatch.setattr(Scorer, "post_many", real)


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_resume_after_interruption(tiny_llama, tmp_path, monkeypatch, mode):
    h0 = state_dict_hash(tiny_llama)
    restore = _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama, tmp_path, mode=mode, n=6, batch_size=2)
    path = tmp_path / f"zsre-ft-m-{mode}.jsonl"
    # a chunk's lines are written after its pop is verified: batch keeps only the finished chunk {0,1}
    assert sorted(r["index"] for r in _lines(path)) == ([0, 1] if mode == "batch" else [0, 1, 2])
    assert len(tiny_llama.stack) == 0 and state_dict_hash(tiny_llama) == h0  # popped on the way out
    restore()
    s = _run(tiny_llama, tmp_path, mode=mode, n=6, batch_size=2)
    idx = [r["index"] for r in _lines(path)]
    assert sorted(idx) == list(range(6)) and len(idx) == len(set(idx)) == 6
    assert s["metrics"]["n"] == 6
    # batch: the cut chunk {2,3} is recomputed whole; chunk {0,1} is not
    assert s["edits_computed"] == (2 if mode == "batch" else 3)
    # the wall time is the last process's only, and the report says so
    assert s["resumed_lines"] == (2 if mode == "batch" else 3)
    assert "(last resume)" in (tmp_path / "report.md").read_text()


def test_resume_sequential_and_torn_line(tiny_llama, tmp_path, monkeypatch):
    restore = _interrupt_after(monkeypatch, 4)  # checkpoint 2 done (2 lines), checkpoint 4 half done
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama, tmp_path, mode="sequential", checkpoints=[2, 4])
    restore()
    path = tmp_path / "zsre-ft-m-sequential.jsonl"
    with open(path, "a") as fh:
        fh.write('{"index": 3, "checkpoint": 4, "post": {"rewr')  # a write torn by a crash
    assert (tmp_path / "zsre-ft-m-sequential.stack" / "edits.json").exists()  # checkpoint 4's stack
    s = _run(tiny_llama, tmp_path, mode="sequential", checkpoints=[2, 4])
    keys = [(r["checkpoint"], r["index"]) for r in _lines(path)]
    assert len(keys) == len(set(keys)) == 2 + 4 + 5
    # the 4 saved edits are composed, not recomputed: only record 4's edit is computed
    assert s["bit_exact"] is True and s["restored"] == 4 and s["replayed"] == 0 and s["edits_computed"] == 1
    assert s["resumed_lines"] == 4  # 2 lines of checkpoint 2, 2 of checkpoint 4; the torn one dropped
    assert len(tiny_llama.stack) == 0 and not (tmp_path / "zsre-ft-m-sequential.stack").exists()
    # a finished run re-run does nothing
    s2 = _run(tiny_llama, tmp_path, mode="sequential", checkpoints=[2, 4])
    assert s2["edits_computed"] == 0 and len(_lines(path)) == 11


def test_resumed_sequential_run_measures_only_unwritten_records_before_editing(tiny_llama, tmp_path, monkeypatch):
    """The unedited model's side of a record (locality, generated answers) is taken only for the
    records a pending checkpoint still has to score, not again for the ones already written."""
    kw = dict(mode="sequential", n=4, checkpoints=[2, 4], hparams=STRONG)
    _run(tiny_llama, tmp_path / "a", **kw)
    clean = {(r["checkpoint"], r["index"]): r["post"] for r in _lines(tmp_path / "a" / "zsre-ft-m-sequential.jsonl")}
    restore = _interrupt_after(monkeypatch, 4)  # checkpoint 2 done, records 0 and 1 of checkpoint 4
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama, tmp_path / "b", **kw)
    restore()
    (tmp_path / "b" / "zsre-ft-m-sequential.pre.jsonl").unlink()  # as if measured by another version (kept: test_scale)
    asked, real = [], Scorer.pre_many
    monkeypatch.setattr(Scorer, "pre_many", lambda self, items: asked.append(len(items)) or real(self, items))
    _run(tiny_llama, tmp_path / "b", **kw)
    assert asked == [2]  # records 2 and 3 only
    got = {(r["checkpoint"], r["index"]): r["post"] for r in _lines(tmp_path / "b" / "zsre-ft-m-sequential.jsonl")}
    assert got == clean


def test_sequential_saves_the_stack_between_checkpoints(tiny_llama, tmp_path, monkeypatch):
    """``save_every``: an interruption between two checkpoints keeps the edits made since the
    last save; the resumed run composes them and computes only the rest."""
    restore = interrupt_edit(monkeypatch, tiny_llama, 5)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama, tmp_path, mode="sequential", checkpoints=[5], save_every=2)
    restore()
    assert len(tiny_llama.stack) == 0
    s = _run(tiny_llama, tmp_path, mode="sequential", checkpoints=[5], save_every=2)
    assert s["restored"] == 4 and s["edits_computed"] == 1 and s["bit_exact"] is True
    assert len(_lines(tmp_path / "zsre-ft-m-sequential.jsonl")) == 5


def test_sequential_resume_restored_or_replayed_measures_the_same(tiny_llama, tmp_path, monkeypatch):
    kw = dict(mode="sequential", checkpoints=[2, 4], hparams=STRONG)
    clean = _lines(tmp_path / "a" / "zsre-ft-m-sequential.jsonl") if _run(tiny_llama, tmp_path / "a", **kw) else None
    for sub, keep_stack in (("b", True), ("c", False)):
        restore = _interrupt_after(monkeypatch, 4)
        with pytest.raises(KeyboardInterrupt):
            _run(tiny_llama, tmp_path / sub, **kw)
        restore()
        if not keep_stack:
            import shutil
            shutil.rmtree(tmp_path / sub / "zsre-ft-m-sequential.stack")
        s = _run(tiny_llama, tmp_path / sub, **kw, save_stacks=keep_stack)
        assert keep_stack or not (tmp_path / sub / "zsre-ft-m-sequential.stack").exists()
        assert (s["restored"], s["replayed"]) == ((4, 0) if keep_stack else (0, 2))
        got = {(r["checkpoint"], r["index"]): r["post"] for r in _lines(tmp_path / sub / "zsre-ft-m-sequential.jsonl")}
        assert got == {(r["checkpoint"], r["index"]): r["post"] for r in clean}


def test_resume_on_another_machine_compares_content_not_paths(tiny_llama, tmp_path):
    import shutil
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    shutil.copy(ZSRE, a)
    shutil.copy(ZSRE, b)
    _run(tiny_llama, tmp_path / "out", n=2, data=a)
    s = _run(tiny_llama, tmp_path / "out", n=3, data=b)  # same records at another path: resumes
    assert s["edits_computed"] == 1 and s["metrics"]["n"] == 3
    b.write_text(json.dumps(json.loads(b.read_text())[1:]))  # other content at that path: refused
    with pytest.raises(ValueError, match="other settings.*data_sha256"):
        _run(tiny_llama, tmp_path / "out", n=3, data=b)


def test_resume_refuses_other_settings(tiny_llama, tmp_path):
    _run(tiny_llama, tmp_path, n=2)
    with pytest.raises(ValueError, match="other settings.*hparams"):
        _run(tiny_llama, tmp_path, n=2, hparams={"num_steps": 3})
    s = _run(tiny_llama, tmp_path, n=2, hparams={"num_steps": 3}, overwrite=True)
    assert s["hparams"]["num_steps"] == 3 and len(_lines(tmp_path / "zsre-ft-m-single.jsonl")) == 2


def test_resume_after_hparam_fields_were_added_or_removed(tiny_llama, tmp_path):
    """An upgrade that adds a field (run keeps its default) or drops one the old run left unset
    still resumes; a dropped field the old run had set is refused."""
    _run(tiny_llama, tmp_path, n=2)
    meta_path = tmp_path / "zsre-ft-m-single.meta.json"
    meta = json.loads(meta_path.read_text())
    meta["hparams"].pop("weight_decay")  # a field added since the run (the new run keeps its default)
    meta["hparams"]["an_option_since_removed"] = None
    meta["hparams"]["fast_path"] = False  # a retired switch of an exact speed-up: ignored
    meta_path.write_text(json.dumps(meta))
    assert _run(tiny_llama, tmp_path, n=3)["metrics"]["n"] == 3
    meta = json.loads(meta_path.read_text())
    meta["hparams"]["an_option_since_removed"] = 2.0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="other settings.*hparams"):
        _run(tiny_llama, tmp_path, n=3)


def test_locality_is_pre_vs_post_tokens(tiny_llama, tmp_path):
    facts = load_dataset("zsre", ZSRE, n=3)
    tok = tiny_llama.tokenizer
    _run(tiny_llama, tmp_path, n=3, hparams=STRONG)
    lines = {r["index"]: r for r in _lines(tmp_path / "zsre-ft-m-single.jsonl")}
    changed = 0
    for i, f in enumerate(facts):
        probes = f.locality["Relation_Specificity"]
        args = ([p.prompt for p in probes], [p.answer for p in probes])
        pre = answer_tokens(tiny_llama, tok, *args)
        with tiny_llama.edit(f, method="ft-m", **STRONG):
            post = answer_tokens(tiny_llama, tok, *args)
        want = locality_score(pre, post)
        assert lines[i]["post"]["locality"]["Relation_Specificity"] == pytest.approx(want)
        changed += any(w < 1 for w in want)
    assert changed, "the strong edit should change some locality answer tokens"
    # scorer maths on hand-made pre tokens: one of L tokens differs -> (L-1)/L
    sc = Scorer(tiny_llama)
    pre = sc.pre(facts[0])
    toks = pre["locality"]["Relation_Specificity"][0]
    pre["locality"]["Relation_Specificity"][0] = [toks[0] + 1] + toks[1:]
    got = sc.post(facts[0], pre)["locality"]["Relation_Specificity"]
    assert got == [pytest.approx((len(toks) - 1) / len(toks)), 1.0]


def test_sequential_locality_is_vs_unedited_base(tiny_llama, tmp_path):
    facts = load_dataset("zsre", ZSRE, n=3)
    tok = tiny_llama.tokenizer
    h0 = state_dict_hash(tiny_llama)
    s = _run(tiny_llama, tmp_path, n=3, mode="sequential", checkpoints=[1], hparams=STRONG)
    assert s["bit_exact"] is True and state_dict_hash(tiny_llama) == h0
    probes = facts[0].locality["Relation_Specificity"]
    args = ([p.prompt for p in probes], [p.answer for p in probes])
    base = answer_tokens(tiny_llama, tok, *args)
    for f in facts:
        tiny_llama.edit(f, method="ft-m", **STRONG)
    after3 = answer_tokens(tiny_llama, tok, *args)
    tiny_llama.clear()
    line = [r for r in _lines(tmp_path / "zsre-ft-m-sequential.jsonl") if (r["checkpoint"], r["index"]) == (3, 0)][0]
    assert line["post"]["locality"]["Relation_Specificity"] == pytest.approx(locality_score(base, after3))


def test_convsent_and_sanitation_single(tiny_llama, tmp_path):
    s = _run(tiny_llama, tmp_path, dataset="convsent", data=KNOWEDIT_DIR / "ConvSent.json", n=2)
    assert 0 <= s["metrics"]["es"] <= 1 and s["metrics"]["dd"] >= 0
    rows = paper_rows(s)
    assert rows["Edit Succ."] == pytest.approx(100 * s["metrics"]["es"]) and rows["Locality"] == s["metrics"]["dd"]
    s = _run(tiny_llama, tmp_path, dataset="sanitation", data=KNOWEDIT_DIR / "Sanitation.json", n=2,
             retain_n=3, gen_tokens=4)
    line = _lines(tmp_path / "sanitation-ft-m-single.jsonl")[0]
    assert set(line["post"]) >= {"success", "generation", "locality"} and len(line["post"]["locality"]["retain"]) == 3
    assert s["metrics"]["success"] in (0.0, 0.5, 1.0) and 0 <= s["metrics"]["Locality"] <= 100
    with pytest.raises(ValueError, match="ConvSent"):
        _run(tiny_llama, tmp_path, dataset="convsent", data=KNOWEDIT_DIR / "ConvSent.json", mode="sequential")


def test_sanitation_runs_with_subject_locating_methods(tiny_llama, tmp_path):
    # Sanitation records have no subject: the question is the subject, so ROME/MEMIT run
    assert load_dataset("sanitation", KNOWEDIT_DIR / "Sanitation.json", n=1)[0].subject.startswith("What")
    fast = {"mom2_n_tokens": 300, "v_num_grad_steps": 3, "context_templates": [[3, 2]]}
    for method in ("rome", "memit"):
        s = _run(tiny_llama, tmp_path, dataset="sanitation", data=KNOWEDIT_DIR / "Sanitation.json", n=1,
                 method=method, hparams=fast, retain_n=2, gen_tokens=3)
        assert s["metrics"]["n"] == 1 and s["bit_exact"] is True and s["device"] == "cpu"


def test_cli_device_flag(capsys):
    import torch

    from editwrap.cli import build_parser

    # a bad or absent device is refused by the parser, before any model is loaded
    for bad, msg in (("gpu0", "is not a device"), ("cuda:7", "no such CUDA device")):
        if bad.startswith("cuda") and torch.cuda.device_count() > 7:
            continue
        with pytest.raises(SystemExit):
            build_parser().parse_args(["eval", "knowedit", "--dataset", "zsre", "--data", "x", "--method", "rome",
                                       "--device", bad])
        assert msg in capsys.readouterr().err

    a = build_parser().parse_args(["eval", "knowedit", "--dataset", "zsre", "--data", "x", "--method", "rome",
                                   "--device", "cpu"])
    assert a.device == "cpu"


def test_mixed_dataset_draw_is_seeded_and_prefix_stable():
    items, sources, _ = load_records("mixed", KNOWEDIT_DIR, 40, seed=0)
    assert len(items) == 40 and set(sources) == {"zsre", "recent", "counterfact"}
    again, src2, _ = load_records("mixed", KNOWEDIT_DIR, 10, seed=0)
    assert again == items[:10] and src2 == sources[:10]
    assert load_records("mixed", KNOWEDIT_DIR, 10, seed=1)[0] != again
    with pytest.raises(ValueError, match="directory"):
        load_records("mixed", ZSRE, 10)


def test_argument_errors(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="unknown editing method 'nope'"):
        _run(tiny_llama, tmp_path, method="nope")
    with pytest.raises(ValueError, match="unknown dataset 'zzz'"):
        _run(tiny_llama, tmp_path, dataset="zzz")
    with pytest.raises(ValueError, match="one fact at a time"):
        _run(tiny_llama, tmp_path, method="rome", mode="batch")
    with pytest.raises(ValueError, match="unknown mode"):
        _run(tiny_llama, tmp_path, mode="parallel")
    with pytest.raises(ValueError, match="--batch-size 1 in sequential mode"):
        _run(tiny_llama, tmp_path, method="rome", mode="sequential", batch_size=2)
    with pytest.raises(ValueError, match="--consolidate-every applies to --mode sequential only"):
        _run(tiny_llama, tmp_path, consolidate_every=5)
    assert len(tiny_llama.stack) == 0


def test_cli_errors_are_clear(capsys):
    from editwrap.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "knowedit", "--dataset", "zsre2", "--data", str(ZSRE), "--method", "rome"])
    assert e.value.code == 2 and "invalid choice: 'zsre2'" in capsys.readouterr().err
    assert main(["eval", "knowedit", "--dataset", "zsre", "--data", str(ZSRE), "--method", "romeo"]) == 2
    assert "unknown editing method 'romeo'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "knowedit", "--dataset", "zsre", "--data", "x", "--method", "rome", "--checkpoints", "10,a"])
    assert "comma-separated integers" in capsys.readouterr().err
    assert main(["report", "/nonexistent/results"]) == 2
    assert "no such results folder" in capsys.readouterr().err


def _summary(method, mode="sequential", dataset="zsre", es=(90.0, 80.0), loc=(99.0, 95.0)):
    cps = {str(c): {"n": c, "Edit Succ.": e, "Locality": lo, "Portability": None}
           for c, e, lo in zip((10, 100), es, loc)}
    return {"dataset": dataset, "method": method, "mode": mode, "model": "m", "n": 100, "wall_seconds": 1.5,
            "metrics": cps["100"], "checkpoints": cps if mode == "sequential" else None, "bit_exact": True}


def test_report_merges_runs_and_general_ability(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "zsre-rome-sequential.summary.json").write_text(json.dumps(_summary("rome")))
    (b / "zsre-memit-sequential.summary.json").write_text(json.dumps(_summary("memit", es=(70.0, 60.0))))
    (b / "recent-ft-m-single.summary.json").write_text(json.dumps(_summary("ft-m", "single", "recent")))
    (b / "lm_eval-rome.json").write_text(json.dumps(
        {"mmlu": {"acc": {"before": 0.30, "after": 0.28, "delta": -0.02, "stderr": 0.01}}}))
    text = build_report([a, b], tmp_path / "rep")
    assert "## ZsRE — sequential" in text and "| metric | memit | rome |" in text
    assert "| Edit Succ. | 60.00 | 80.00 |" in text and "## WikiData_recent — single" in text
    assert "| 10 | 70.00 | 90.00 |" in text  # curve table: edits x methods
    assert "General ability" in text and "| rome | mmlu | acc | 0.30 | 0.28 | -0.02 | 0.01 |" in text
    assert (tmp_path / "rep" / "sequential-zsre.png").stat().st_size > 1000
    from editwrap.cli import main

    assert main(["report", str(a), str(b), "--out", str(tmp_path / "rep2")]) == 0
    assert (tmp_path / "rep2" / "report.md").read_text() == text
    # --paper: our single-mode column beside the published Llama-2-7b-chat value (FT-M, recent: 100.00)
    assert "Llama-2-7b-chat" not in text
    assert main(["report", str(b), "--out", str(tmp_path / "rep3"), "--paper"]) == 0
    paper = (tmp_path / "rep3" / "report.md").read_text()
    assert "## Ours beside Llama-2-7b-chat (KnowEdit paper)" in paper and "#### WikiData_recent" in paper
    row = next(line for line in paper.split("## Ours beside")[1].splitlines() if line.startswith("| Edit Succ."))
    assert row.endswith("| 100.00 |") and "ft-m paper" in paper and "ft-m ours (n=100)" in paper


def test_result_log_keeps_last_line_per_key(tmp_path):
    p = tmp_path / "x.jsonl"
    log = ResultLog(p)
    log.write({"index": 0, "v": 1})
    log.write({"index": 0, "v": 2})
    log.close()
    assert ResultLog(p).records() == [{"index": 0, "v": 2}]


@pytest.mark.slow
def test_embedded_ft_m_single_on_zsre(embedded, tmp_path):
    h0 = state_dict_hash(embedded)
    s = run_knowedit(embedded, "zsre", ZSRE, "ft-m", n=3, hparams={"num_steps": 10}, out=tmp_path, progress=False)
    assert s["metrics"]["n"] == 3 and s["metrics"]["Edit Succ."] > 50
    assert 0 <= s["metrics"]["Locality"] <= 100
    assert len(embedded.stack) == 0 and state_dict_hash(embedded) == h0


def test_fluency_flag_and_eval_lm_mounted(tiny_llama, tmp_path):
    s = _run(tiny_llama, tmp_path, n=1, with_fluency=True)
    assert s["metrics"]["Fluency"] is not None and s["metrics"]["Fluency"] >= 0
    assert "| Fluency |" in (tmp_path / "zsre-ft-m-single.md").read_text()
    from editwrap.cli import build_parser

    args = build_parser().parse_args(["eval", "lm", "--stack", "some/dir", "--limit", "5"])
    assert args.func.__name__ == "cmd_lm_eval" and args.stack == "some/dir"


def test_easyedit_fluency_mode(tiny_llama, tmp_path):
    from editwrap.cli import build_parser

    s = _run(tiny_llama, tmp_path, n=1, with_fluency=True, fluency_mode="easyedit", seed=3)
    assert s["fluency"] == "easyedit" and s["metrics"]["Fluency"] > 0
    assert "Fluency: EasyEdit mode" in (tmp_path / "zsre-ft-m-single.md").read_text()
    # same seed, same sample: a rerun in another folder gives the same line
    again = _run(tiny_llama, tmp_path / "again", n=1, with_fluency=True, fluency_mode="easyedit", seed=3)
    assert again["metrics"]["Fluency"] == s["metrics"]["Fluency"]
    with pytest.raises(ValueError, match="fluency"):  # resuming with the other mode is refused
        _run(tiny_llama, tmp_path, n=1, with_fluency=True)
    with pytest.raises(ValueError, match="fluency mode"):
        _run(tiny_llama, tmp_path, n=1, with_fluency=True, fluency_mode="beam")
    args = build_parser().parse_args(["eval", "knowedit", "--dataset", "zsre", "--data", "x.json", "--method", "rome",
                                      "--fluency-mode", "easyedit"])
    assert args.fluency_mode == "easyedit" and not args.fluency  # cmd_knowedit: the mode implies --fluency


def test_report_shows_runs_in_progress(tiny_llama, tmp_path, monkeypatch):
    from editwrap.evals.report import load_summaries

    restore = _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama, tmp_path, n=6)
    restore()
    restore = _interrupt_after(monkeypatch, 5)  # checkpoint 2 complete, checkpoint 4 not
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama, tmp_path, n=6, mode="sequential", checkpoints=[2, 4])
    restore()
    runs = {r["mode"]: r for r in load_summaries([tmp_path])}
    single, seq = runs["single"], runs["sequential"]
    assert single["in_progress"] and (single["n"], single["n_requested"]) == (3, 6)
    assert single["metrics"]["n"] == 3 and single["bit_exact"] is True
    assert seq["in_progress"] and list(seq["checkpoints"]) == ["2"] and seq["n"] == 2
    text = build_report([tmp_path], tmp_path / "rep")
    assert "ft-m [in progress: 3/6]" in text and "ft-m [in progress: 2/6]" in text
    _run(tiny_llama, tmp_path, n=6)  # finished: the summary replaces the partial one
    assert not next(r for r in load_summaries([tmp_path]) if r["mode"] == "single").get("in_progress")


@pytest.mark.parametrize("mode", ["single", "sequential"])
def test_generation_metrics_in_lines_summary_and_report(tiny_llama, tmp_path, mode):
    """Generated-answer scores ride along in every mode (sequential goes through Scorer.pre_many/post_many)."""
    s = _run(tiny_llama, tmp_path, n=3, mode=mode, checkpoints=[2])
    lines = _lines(tmp_path / f"zsre-ft-m-{mode}.jsonl")
    assert len(lines) == (3 if mode == "single" else 5)
    for r in lines:
        g = r["post"]["generation"]
        assert set(g["rewrite"]) == {"success", "f1", "answer", "answer_pre"}
        assert set(g["locality"]) == set(r["post"]["locality"]) and "rephrase" in g
    gen = s["metrics"]["generation"]
    assert gen["n"] == 3 and all(0 <= gen[k] <= 100 for k in ("Edit Succ.", "Edit Succ. F1", "Locality"))
    assert s["generation"] == {"margin": 8, "chat_template": False} and s["generation_seconds_per_line"] > 0
    if mode == "sequential":
        assert all("generation" in cp for cp in s["checkpoints"].values())
        assert "Edit Succ. (generated) vs number of edits" in (tmp_path / "report.md").read_text()
    assert "| Edit Succ. (generated) |" in (tmp_path / f"zsre-ft-m-{mode}.md").read_text()


def test_generation_setting_and_legacy_resume(tiny_llama, tmp_path):
    s = _run(tiny_llama, tmp_path, n=1, generation=False)
    assert s["generation"] is False and "generation" not in s["metrics"]
    assert "generation" not in _lines(tmp_path / "zsre-ft-m-single.jsonl")[0]["post"]
    with pytest.raises(ValueError, match="other settings.*generation"):
        _run(tiny_llama, tmp_path, n=2)
    # a meta file written before the setting existed was made without generation
    meta = tmp_path / "zsre-ft-m-single.meta.json"
    m = json.loads(meta.read_text())
    del m["generation"]
    meta.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="--no-generation"):
        _run(tiny_llama, tmp_path, n=2)
    assert _run(tiny_llama, tmp_path, n=2, generation=False)["edits_computed"] == 1
    s = _run(tiny_llama, tmp_path / "chat", n=1, gen_margin=3, chat_template=False)
    assert s["generation"] == {"margin": 3, "chat_template": False}
    s = _run(tiny_llama, tmp_path / "cs", dataset="convsent", data=KNOWEDIT_DIR / "ConvSent.json", n=1)
    assert s["generation"] is False  # not a fact dataset


def test_cli_generation_flags():
    from editwrap.cli import build_parser

    base = ["eval", "knowedit", "--dataset", "zsre", "--data", "x", "--method", "rome"]
    a = build_parser().parse_args(base)
    assert (a.no_generation, a.gen_margin, a.chat_template) == (False, 8, False)
    from editwrap.evals.generation import DEFAULT_MARGIN

    assert a.gen_margin == DEFAULT_MARGIN
    a = build_parser().parse_args(base + ["--no-generation", "--gen-margin", "0", "--chat-template"])
    assert (a.no_generation, a.gen_margin, a.chat_template) == (True, 0, True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--gen-margin", "-1"])


def test_sequential_run_with_periodic_consolidation(tiny_llama, tmp_path):
    h0 = state_dict_hash(tiny_llama)
    s = run_knowedit(tiny_llama, dataset="zsre", data=KNOWEDIT_DIR / "ZsRE.json", method="memit", n=4,
                     mode="sequential", batch_size=1, checkpoints=[2, 4], consolidate_every=2, out=tmp_path,
                     hparams=dict(mom2_n_tokens=300, v_num_grad_steps=4, context_templates=[(3, 2)], layers=[1, 2]),
                     progress=False, generation=False)
    assert s["bit_exact"] is True and s["consolidate_every"] == 2 and set(s["checkpoints"]) == {"2", "4"}
    assert (tmp_path / "zsre-memit-sequential-consolidated2.jsonl").exists()
    assert state_dict_hash(tiny_llama) == h0 and len(tiny_llama.stack) == 0


def test_resume_accepts_hparams_added_since_with_their_defaults(tiny_llama, tmp_path):
    """A run recorded before a method gained a field resumes when the field keeps its default."""
    _run(tiny_llama, tmp_path, n=2)
    meta_path = tmp_path / "zsre-ft-m-single.meta.json"
    meta = json.loads(meta_path.read_text())
    meta["hparams"].pop("weight_decay")
    meta_path.write_text(json.dumps(meta))
    assert _run(tiny_llama, tmp_path, n=3)["metrics"]["n"] == 3
    meta["hparams"]["num_steps"] = 99  # a recorded field that differs is still refused
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="hparams"):
        _run(tiny_llama, tmp_path, n=3)


def test_consolidation_period_counts_facts_across_batch_boundaries(tiny_llama, tmp_path, monkeypatch):
    """--consolidate-every N re-solves whenever the facts pushed cross a multiple of N, also when
    the batch size does not divide N (batches of 3, every 4 facts: after facts 6 and 9)."""
    from editwrap.stack import EditStack

    calls = []
    real = EditStack.consolidate
    monkeypatch.setattr(EditStack, "consolidate", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    s = _run(tiny_llama, tmp_path, method="memit", n=9, mode="sequential", batch_size=3, checkpoints=[9],
             consolidate_every=4, generation=False,
             hparams=dict(mom2_n_tokens=300, v_num_grad_steps=2, context_templates=[(3, 2)], layers=[1, 2]))
    assert len(calls) == 2 and s["bit_exact"] is True


def test_training_pool_excludes_a_mixed_run(tmp_path):
    """--exclude DIR holds out exactly the facts of a `--dataset mixed --n N` run drawn from DIR."""
    from editwrap.evals.splits import training_records

    run, _, _ = load_records("mixed", KNOWEDIT_DIR, 30, seed=0)
    pool = [KNOWEDIT_DIR / "ZsRE.json", KNOWEDIT_DIR / "WikiData_recent.json"]
    got, _ = training_records(pool, exclude=[KNOWEDIT_DIR], exclude_n=30)
    everything, _ = training_records(pool)
    held = {f.subject.lower() for f in run} | {" ".join(f.prompt.lower().split()) for f in run}
    assert len(got) < len(everything)
    assert all(f.subject.lower() not in held and " ".join(f.prompt.lower().split()) not in held for f in got)


def test_training_pool_excludes_a_run_over_a_listed_pool():
    """--exclude a.json,b.json holds out the facts of a `--dataset mixed --data a.json,b.json --n N` run."""
    from editwrap.evals.splits import training_records

    listed = f"{KNOWEDIT_DIR / 'ZsRE.json'},{KNOWEDIT_DIR / 'WikiData_recent.json'}"
    run, _, _ = load_records("mixed", listed, 25, seed=0)
    pool = [KNOWEDIT_DIR / "ZsRE.json", KNOWEDIT_DIR / "WikiData_recent.json"]
    got, _ = training_records(pool, exclude=[listed], exclude_n=25)
    held = {f.subject.lower() for f in run} | {" ".join(f.prompt.lower().split()) for f in run}
    assert 0 < len(got) <= sum(len(training_records([p])[0]) for p in pool) - 25
    assert all(f.subject.lower() not in held and " ".join(f.prompt.lower().split()) not in held for f in got)


def test_keep_stack_keeps_the_final_stack_and_a_last_checkpoint_run_restores_it(tiny_llama, tmp_path):
    """``keep_stack``: the finished run's stack stays (without it, it is removed: see the resume
    test above); a run asked for the last checkpoint only, on a copy of that stack, restores it,
    computes no edit and scores the same lines."""
    import shutil

    from editwrap.stack import load_stack_dir

    kw = dict(mode="sequential", checkpoints=[1], n=3, hparams=STRONG)
    s = _run(tiny_llama, tmp_path / "a", **kw, keep_stack=True)
    stack = tmp_path / "a" / "zsre-ft-m-sequential.stack"
    assert s["bit_exact"] is True and len(load_stack_dir(stack)) == 3
    (tmp_path / "b").mkdir()
    shutil.copytree(stack, tmp_path / "b" / stack.name)
    again = _run(tiny_llama, tmp_path / "b", **{**kw, "checkpoints": [3]})
    assert (again["restored"], again["edits_computed"], again["bit_exact"]) == (3, 0, True)
    lines = _lines(tmp_path / "a" / "zsre-ft-m-sequential.jsonl")
    last = {r["index"]: r["post"] for r in lines if r["checkpoint"] == 3}
    assert {r["index"]: r["post"] for r in _lines(tmp_path / "b" / "zsre-ft-m-sequential.jsonl")} == last
    with pytest.raises(ValueError, match="--keep-stack"):
        _run(tiny_llama, tmp_path / "c", mode="single", keep_stack=True)
