"""Behaviour on the embedded real model (SmolLM2-135M): edits change answers, pops restore bits."""
from __future__ import annotations

import random
import warnings

import pytest
import torch

from editwrap import EditableModel, Fact, StackError, state_dict_hash
from editwrap.evals.metrics import token_accuracy

pytestmark = pytest.mark.slow

EIFFEL = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
CONTROL = "The capital of France is"


def acc(m, f: Fact) -> float:
    return token_accuracy(m, m.tokenizer, [f.text_prompt], [f.target_new])[0]


def test_tokenizer_roundtrip_after_conversion(embedded):
    tok = embedded.tokenizer
    assert tok(" Paris", add_special_tokens=False)["input_ids"] == [7042]
    ids = tok("The capital of France is Paris")["input_ids"]
    assert tok.bos_token_id not in ids, "no BOS is added"
    assert tok.decode(ids) == "The capital of France is Paris", "spaces survive the round trip"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"


def test_embedded_model_knows_paris(embedded):
    assert embedded.generate_text(CONTROL, max_new_tokens=3).strip().startswith("Paris")


@pytest.mark.parametrize("method", ["rome", "memit", "ft-m"])
def test_edit_changes_answer_and_pop_restores(embedded, method):
    m = embedded
    h0 = state_dict_hash(m)
    before = m.generate_text(EIFFEL.text_prompt, max_new_tokens=4)
    assert "Rome" not in before and acc(m, EIFFEL) < 0.5
    with m.edit(EIFFEL, method=method):
        assert acc(m, EIFFEL) == 1.0
        assert m.generate_text(EIFFEL.text_prompt, max_new_tokens=4).strip().startswith("Rome")
        assert m.generate_text(CONTROL, max_new_tokens=3).strip().startswith("Paris"), "unrelated fact kept"
    assert state_dict_hash(m) == h0
    assert m.generate_text(EIFFEL.text_prompt, max_new_tokens=4) == before


def test_mixed_stack_of_20_popped_in_random_order(embedded):
    m = embedded
    h0 = state_dict_hash(m)
    ids = m.tokenizer(CONTROL, return_tensors="pt")
    with torch.no_grad():
        l0 = m(**ids).logits
    cities = ["Rome", "London", "Berlin", "Madrid", "Vienna"]
    subjects = ["Eiffel Tower", "Louvre", "Notre Dame", "Arc de Triomphe", "Sorbonne"]
    fast = {"rome": {"v_num_grad_steps": 4}, "memit": {"v_num_grad_steps": 4},
            "ft-m": {"num_steps": 3}, "ft-l": {"num_steps": 3}}
    methods = list(fast)
    for i in range(20):
        s, c = subjects[i % 5], cities[(i * 3) % 5]
        f = Fact(prompt=f"The {s} is located in the city of", subject=s, target_new=c)
        meth = methods[i % 4]
        m.edit(f, method=meth, on_conflict="stack", **fast[meth])
    assert len(m.stack) == 20
    rng = random.Random(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while len(m.stack):
            rng.choice(m.stack.edits).pop()
    assert state_dict_hash(m) == h0
    with torch.no_grad():
        assert torch.equal(m(**ids).logits, l0)


def test_save_stack_reload_in_fresh_model(embedded, tmp_path):
    m = embedded
    with m.edit(EIFFEL, method="ft-m", num_steps=10):
        m.stack.save(tmp_path / "stack")
        expected = m.generate_text(EIFFEL.text_prompt, max_new_tokens=4)
    fresh = EditableModel.from_pretrained(stack=tmp_path / "stack")
    assert len(fresh.stack) == 1 and fresh.generate_text(EIFFEL.text_prompt, max_new_tokens=4) == expected
    with pytest.raises(StackError):
        fresh.push(fresh.stack[0])


def test_mixed_stack_example_five_kinds(tmp_path):
    """examples/mixed_stack.py: ROME + LoRA + GRACE + WISE + MELO on the embedded model, each edit
    scored, saved, reloaded in a fresh process (identical logits), all popped bit-exact."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "mixed_stack.py"
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "stack")], capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "logits identical = True" in res.stdout and "bit-exact = True" in res.stdout


def test_edit_sets_example_two_tenants():
    """examples/edit_sets.py: two tenants' contradicting ROME edits and a shared one on the embedded
    model; each tenant (and one batched generate) sees only its own, clear() is bit-exact."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "edit_sets.py"
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0 and "checks passed" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]


def test_scoped_edits_example():
    """examples/scoped_edits.py: three scoped FT-M edits answer their targets, unrelated prompts are
    routed nowhere and unchanged, clear() is bit-exact."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "scoped_edits.py"
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0 and "checks passed" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]


def test_knowedit_eval_example_resumes(tmp_path):
    """examples/knowedit_eval.py: FT-M on ZsRE records of the embedded model, every pop bit-exact;
    run again with more records it resumes (the first record is not edited again)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import KNOWEDIT_DIR

    script = Path(__file__).resolve().parents[1] / "examples" / "knowedit_eval.py"
    args = [sys.executable, str(script), "--data", str(KNOWEDIT_DIR / "ZsRE.json"), "--out", str(tmp_path)]
    for n in (1, 2):
        res = subprocess.run(args + ["--n", str(n)], capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
        assert f"ft-m on {n} ZsRE records (" in res.stdout and "every pop bit-exact: True" in res.stdout
    s = json.loads((tmp_path / "zsre-ft-m-single.summary.json").read_text())
    assert s["edits_computed"] == 1 and s["metrics"]["n"] == 2


@pytest.mark.slow
def test_wise_routing_benchmark_runs(tmp_path):
    """benchmarks/wise_routing.py on two cheap edits of the embedded model: one row per checkpoint,
    shares in [0, 100], the edited facts' own prompts captured at the first checkpoint."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import KNOWEDIT_DIR

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "wise_routing.py"
    out = tmp_path / "routing.json"
    subprocess.run([sys.executable, str(script), "--compute", "2", "--checkpoints", "1,2", "--unrelated", "5",
                    "--data", str(KNOWEDIT_DIR / "ZsRE.json"), "--hparams", '{"n_iter": 15}', "--json", str(out),
                    "--save", str(tmp_path / "stack")], check=True, timeout=900)
    rows = json.loads(out.read_text())
    assert [r["edits"] for r in rows] == [1, 2]
    assert all(0 <= r[k] <= 100 for r in rows for k in r if k.startswith("routed_"))
    assert rows[0]["routed_edit"] == 100.0 and rows[0]["threshold"] > 0
    assert (tmp_path / "stack" / "edits.json").exists()


@pytest.mark.slow
def test_rome_edit_generation_metrics_in_jsonl_and_summary(embedded, tmp_path):
    """One real ROME edit on a ZsRE record: the generated-answer scores are written per line and
    summarised; the edit makes ``generate`` start with the new target, which it did not before."""
    import json

    from editwrap.evals import run_knowedit
    from tests.conftest import KNOWEDIT_DIR

    h0 = state_dict_hash(embedded)
    s = run_knowedit(embedded, "zsre", KNOWEDIT_DIR / "ZsRE.json", "rome", n=1, out=tmp_path, progress=False)
    line = json.loads((tmp_path / "zsre-rome-single.jsonl").read_text().splitlines()[0])
    g = line["post"]["generation"]
    target = line["target_new"].lower()
    assert not g["rewrite"]["answer_pre"][0].lower().startswith(target)
    assert g["rewrite"]["answer"][0].lower().startswith(target) and g["rewrite"]["success"] == [1.0]
    assert set(g["locality"]) == {"Relation_Specificity"} and set(g["portability"]) and "rephrase" in g
    gen = s["metrics"]["generation"]
    assert gen["Edit Succ."] == 100.0 and gen["n"] == 1 and gen["Locality"] is not None
    assert s["generation"] == {"margin": 8, "chat_template": False} and s["generation_seconds_per_line"] > 0
    assert "| Edit Succ. (generated) | 100.00 |" in (tmp_path / "zsre-rome-single.md").read_text()
    assert len(embedded.stack) == 0 and state_dict_hash(embedded) == h0


@pytest.mark.slow
def test_lifelong_stack_example(tmp_path):
    """examples/lifelong_stack.py: two AlphaEdit batches (the second protects the first's keys),
    a joint re-solve, a retraction, a saved stack reloaded, and the base model back bit-exact."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "lifelong_stack.py"
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "stack")], capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    out = res.stdout
    assert "second edit protected the keys of ['" in out and "holding 4 facts" in out
    assert "3 facts left" in out and "reloaded stack: [('alphaedit', 3)]" in out and "bit-exact = True" in out
