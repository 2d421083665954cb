"""Very long sequential runs: the seeded score sample, per-checkpoint cost records, and mixed pools
listed file by file (``--data a.json,b.json``)."""
from __future__ import annotations

import json

import pytest

from editwrap.evals import run_knowedit
from editwrap.evals.datasets import load_dataset
from editwrap.evals.pools import data_sha256, load_records, mixed_pool, pool_label
from editwrap.evals.report import load_summaries
from editwrap.evals.scale import indices_digest, scored_indices
from editwrap.stack import load_stack_dir
from tests.conftest import KNOWEDIT_DIR, interrupt_edit

CF = KNOWEDIT_DIR / "counterfact_easyedit.json"
ZSRE = KNOWEDIT_DIR / "ZsRE.json"
LIST = f"{CF},{ZSRE}"
STEM = "mixed-ft-m-sequential"


def _run(model, out, **kw):
    kw = {"dataset": "mixed", "data": LIST, "method": "ft-m", "n": 8, "hparams": {"num_steps": 1}, "out": out,
          "progress": False, "mode": "sequential", "checkpoints": [2, 8], "score_sample": 3, "generation": False,
          **kw}
    return run_knowedit(model, **kw)


def _indices(out, c):
    lines = [json.loads(x) for x in (out / f"{STEM}.jsonl").read_text().splitlines()]
    return sorted(r["index"] for r in lines if r["checkpoint"] == c)


def test_sample_is_seeded_sorted_and_all_below_n():
    s = scored_indices(100, 10, seed=0)
    assert s == sorted(set(s)) and len(s) == 10 and all(0 <= i < 100 for i in s)
    assert s == scored_indices(100, 10, seed=0) and s != scored_indices(100, 10, seed=1)
    assert scored_indices(10, 10, seed=0) == list(range(10)) and scored_indices(7, None, seed=3) == list(range(7))


def test_sampled_checkpoint_scores_the_recorded_sample_and_records_its_cost(tiny_llama, tmp_path):
    s = _run(tiny_llama, tmp_path)
    sample = scored_indices(8, 3, seed=0)
    assert _indices(tmp_path, 2) == [0, 1] and _indices(tmp_path, 8) == sample
    rec = s["score_sample"]
    assert (rec["n"], rec["seed"]) == (3, 0) and rec["sha256"] == {"8": indices_digest(sample)}
    assert s["metrics"]["n"] == 3 and s["n"] == 8 and s["bit_exact"] is True
    st = s["checkpoint_stats"]
    assert (st["2"]["since"], st["2"]["facts_timed"], st["2"]["stack_entries"], st["2"]["scored"]) == (0, 2, 2, 2)
    assert (st["8"]["since"], st["8"]["facts_timed"], st["8"]["stack_entries"], st["8"]["scored"]) == (2, 6, 8, 3)
    assert st["8"]["sample_sha256"] == indices_digest(sample) and "sample_sha256" not in st["2"]
    assert st["8"]["stack_bytes_on_disk"] > st["2"]["stack_bytes_on_disk"] > 0
    assert st["8"]["stack_tensor_bytes"] > st["2"]["stack_tensor_bytes"] > 0
    assert st["8"]["edit_seconds_per_fact"] > 0 and st["8"]["cpu_peak_rss_mb"] > 0
    assert json.loads((tmp_path / f"{STEM}.checkpoints.json").read_text()) == st
    md = (tmp_path / f"{STEM}.md").read_text()
    assert "Cost vs number of edits" in md and "edit s/fact" in md and "seeded sample of 3" in md
    [shown] = load_summaries([tmp_path])  # a sampled last checkpoint is a finished run, not one in progress
    report = (tmp_path / "report.md").read_text()
    assert not shown.get("in_progress") and "Cost vs number of edits, ft-m" in report
    assert "## Mixed (counterfact_easyedit + ZsRE) — sequential" in report  # a listed pool names its files
    assert (tmp_path / "sequential-mixed_counterfact_easyedit_ZsRE.png").is_file()
    assert _run(tiny_llama, tmp_path / "seed1", seed=1)["score_sample"]["sha256"]["8"] != indices_digest(sample)


def test_resume_scores_the_same_sample_and_keeps_restored_edit_times(tiny_llama, tmp_path, monkeypatch):
    """Interrupted after a save between checkpoints: the resumed run restores those edits with
    their compute times (``info["edit_seconds"]``) and scores the same sample."""
    undo = interrupt_edit(monkeypatch, tiny_llama, 7)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama, tmp_path, save_every=2)
    undo()
    saved = load_stack_dir(tmp_path / f"{STEM}.stack")
    assert len(saved) == 6 and all(e.info["edit_seconds"] > 0 for e in saved)
    partial = json.loads((tmp_path / f"{STEM}.checkpoints.json").read_text())
    assert list(partial) == ["2"]
    [shown] = load_summaries([tmp_path])  # in progress: checkpoint 2 and its cost
    assert shown["in_progress"] and shown["checkpoint_stats"] == partial
    s = _run(tiny_llama, tmp_path, save_every=2)
    assert s["restored"] == 6 and s["edits_computed"] == 2
    assert _indices(tmp_path, 8) == scored_indices(8, 3, seed=0)
    assert s["checkpoint_stats"]["8"]["facts_timed"] == 6 and s["checkpoint_stats"]["2"] == partial["2"]
    with pytest.raises(ValueError, match="score_sample"):
        _run(tiny_llama, tmp_path, score_sample=4)


def test_score_sample_needs_a_sequential_run(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="--score-sample"):
        _run(tiny_llama, tmp_path, mode="single")
    with pytest.raises(ValueError, match="N >= 1"):
        _run(tiny_llama, tmp_path, score_sample=0)


def test_listed_pool_keeps_each_files_format_and_probes():
    items, sources, _ = load_records("mixed", LIST, 30, seed=0)
    assert set(sources) == {"counterfact_easyedit", "zsre"} and len(items) == 30
    own = {"counterfact_easyedit": load_dataset("counterfact_easyedit", CF), "zsre": load_dataset("zsre", ZSRE)}
    assert all(f in own[s] for f, s in zip(items, sources))  # the fact as its own format reads it, probes and all
    again, src2, _ = load_records("mixed", [str(CF), str(ZSRE)], 10, seed=0)
    assert again == items[:10] and src2 == sources[:10]
    # format=path names a file's format; a second file of one format is labelled by its stem
    pool = mixed_pool(f"zsre={ZSRE},{ZSRE}")
    assert [(lab, fmt) for lab, fmt, _ in pool] == [("zsre", "zsre"), ("zsre:ZsRE", "zsre")]
    assert data_sha256(LIST) != data_sha256(f"{ZSRE},{CF}") and data_sha256(LIST) == data_sha256([CF, ZSRE])
    assert pool_label(f"zsre={ZSRE},{CF}", KNOWEDIT_DIR) == "zsre=ZsRE.json,counterfact_easyedit.json"


@pytest.mark.parametrize("data, msg", [
    (f"{CF},missing.json", "--data item 2 ('missing.json'): no such file"),
    (f"{CF},{KNOWEDIT_DIR / 'ConvSent.json'}", "is a convsent file"),
    (f"{CF},nope={ZSRE}", "unknown format 'nope' before '='"),
    (f"{CF},", "lists one file"),
])
def test_listed_pool_errors_name_the_item_and_the_fix(data, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_records("mixed", data, 5)


def test_list_needs_the_mixed_dataset():
    with pytest.raises(ValueError, match="--dataset mixed only"):
        load_records("zsre", LIST, 5)


def test_cli_score_sample_and_lists(capsys):
    """``--score-sample`` parses to the run setting; a list is refused without ``--dataset mixed``
    and a bad list item is named before any model is loaded."""
    from editwrap.cli import build_parser, main

    base = ["eval", "knowedit", "--method", "ultraedit", "--mode", "sequential"]
    a = build_parser().parse_args([*base, "--dataset", "mixed", "--data", LIST, "--score-sample", "1000"])
    assert a.score_sample == 1000 and a.seed == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--dataset", "mixed", "--data", LIST, "--score-sample", "0"])
    assert main([*base, "--dataset", "zsre", "--data", LIST]) == 2
    assert "use --dataset mixed" in capsys.readouterr().err
    assert main([*base, "--dataset", "mixed", "--data", f"{CF},nope.json"]) == 2
    assert "--data item 2 ('nope.json')" in capsys.readouterr().err


def test_unedited_measurements_are_kept_across_a_resume(tiny_llama, tmp_path, monkeypatch):
    """An interrupted run keeps the base model's measurements in ``<stem>.pre.jsonl``; the resumed
    run reads them instead of measuring again, ignores lines of other records and gives the same
    results as an uninterrupted run."""
    from editwrap.evals.measure import Scorer

    full = _run(tiny_llama, tmp_path / "full", generation=True)
    undo = interrupt_edit(monkeypatch, tiny_llama, 3)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama, tmp_path, save_every=2, generation=True)
    undo()
    pre = tmp_path / f"{STEM}.pre.jsonl"
    lines = [json.loads(x) for x in pre.read_text().splitlines()]
    needed = sorted({0, 1, *scored_indices(8, 3, seed=0)})  # what checkpoints 2 and 8 score
    assert sorted(r["index"] for r in lines) == needed and all("locality" in r["pre"] for r in lines)
    first = scored_indices(8, 3, seed=0)[0]  # checkpoint 2 is written; checkpoint 8 needs its sample
    lines = [dict(r, prompt="another record") if r["index"] == first else r for r in lines]  # not reused
    pre.write_text("\n".join([*(json.dumps(r) for r in lines), '{"index": 1, "pr']))
    measured = []
    real = Scorer.pre_many
    monkeypatch.setattr(Scorer, "pre_many", lambda self, items: measured.append(len(items)) or real(self, items))
    s = _run(tiny_llama, tmp_path, save_every=2, generation=True)
    assert measured == [1]  # only the record whose cached line did not match
    for c in ("2", "8"):
        assert s["checkpoints"][c] == full["checkpoints"][c]


def test_another_methods_run_on_the_same_records_reuses_the_unedited_measurements(tiny_llama, tmp_path, monkeypatch):
    """A finished run leaves its ``.pre.jsonl``; a run of another method (other hyperparameters) in
    the same folder with the same data and scoring settings starts from it and measures nothing on
    the unedited model, with the same results as measuring; a run with other scoring settings
    (generated answers on) does not take it."""
    from editwrap.evals.measure import Scorer

    _run(tiny_llama, tmp_path, generation=True)
    assert (tmp_path / f"{STEM}.pre.jsonl").exists()
    alone = _run(tiny_llama, tmp_path / "alone", method="ft-l", generation=True)
    measured = []
    real = Scorer.pre_many
    monkeypatch.setattr(Scorer, "pre_many", lambda self, items: measured.append(len(items)) or real(self, items))
    shared = _run(tiny_llama, tmp_path, method="ft-l", generation=True)
    assert measured == [] and (tmp_path / "mixed-ft-l-sequential.pre.jsonl").exists()
    for c in ("2", "8"):
        assert shared["checkpoints"][c] == alone["checkpoints"][c]
    _run(tiny_llama, tmp_path / "other", method="ft-l", generation=False)
    measured.clear()
    _run(tiny_llama, tmp_path / "other", generation=True)  # its settings differ from ft-l's in "generation"
    assert sum(measured) == len({0, 1, *scored_indices(8, 3, seed=0)})
