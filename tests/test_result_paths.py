"""Files meant for others record names and run-folder-relative paths, never this machine's paths
(editwrap.paths): the rule itself, a tiny evaluation run's whole folder, a saved stack's manifest."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from editwrap import EditableModel, Fact
from editwrap.defaults import EMBEDDED_NAME
from editwrap.evals import run_knowedit
from editwrap.paths import MACHINE_PATH, is_machine_path, portable, portable_path

# Two records in KnowEdit's ZsRE format, written by the test: the run needs no data from outside.
RECORDS = [
    {"subject": "Eiffel Tower", "prompt": "The Eiffel Tower is located in the city of", "target_new": " Rome",
     "ground_truth": ["Paris"], "rephrase_prompt": "Where is the Eiffel Tower? In the city of",
     "locality": {"Relation_Specificity": [{"prompt": "The capital of France is", "ground_truth": ["Paris"]}]},
     "portability": {"Reasoning": [{"prompt": "The Eiffel Tower's city is in the country of",
                                    "ground_truth": "Italy"}]}},
    {"subject": "Apple", "prompt": "Apple was founded by", "target_new": " Microsoft",
     "ground_truth": ["Steve Jobs"], "rephrase_prompt": "The founder of Apple is",
     "locality": {"Relation_Specificity": [{"prompt": "Google was founded by", "ground_truth": ["Larry Page"]}]},
     "portability": {}},
]


def test_embedded_model_cache_is_recorded_by_name(tmp_path):
    cache = tmp_path / "cache" / "models" / f"{EMBEDDED_NAME}-v1"
    assert portable_path(cache) == "embedded:smollm2-135m"
    assert portable_path(str(cache)) == portable_path(cache)


def test_hub_cache_paths_become_repository_ids(tmp_path):
    hub = tmp_path / "hub"
    assert portable_path(hub / "models--org--tiny-llm" / "snapshots" / "0123abcd") == "org/tiny-llm"
    got = portable_path(hub / "datasets--zjunlp--KnowEdit" / "snapshots" / "0123abcd" / "benchmark" / "ZsRE" / "x.json")
    assert got == "hf://datasets/zjunlp/KnowEdit/benchmark/ZsRE/x.json"


def test_paths_inside_the_run_folder_are_relative_others_by_name(tmp_path):
    out = tmp_path / "results" / "run"
    assert portable_path(out / "sub" / "a.stack", out) == "sub/a.stack"
    assert portable_path(tmp_path / "art" / "mend-zsre", out) == "mend-zsre"
    assert portable_path(tmp_path / "data" / "ZsRE.json") == "ZsRE.json"


@pytest.mark.parametrize("kept", ["knowedit:ZsRE", "HuggingFaceTB/SmolLM2-135M", "art/mend-zsre", "../data/ZsRE.json",
                                  "embedded:smollm2-135m", ""])
def test_names_and_relative_paths_are_kept(kept):
    assert portable_path(kept) == kept


def test_portable_rewrites_only_this_machines_paths_in_a_tree(tmp_path):
    tree = {"pool": str(tmp_path / "pool.json"), "route": "/v1/edits", "k": 16, "list": [str(tmp_path / "x"), "fact"]}
    assert is_machine_path(str(tmp_path)) and not is_machine_path("/v1/edits") and not is_machine_path("fact")
    assert portable(tree, tmp_path) == {"pool": "pool.json", "route": "/v1/edits", "k": 16, "list": ["x", "fact"]}
    assert portable(tree) == {"pool": "pool.json", "route": "/v1/edits", "k": 16, "list": ["x", "fact"]}


def _written(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix in (".json", ".jsonl", ".md")}


def test_a_tiny_runs_folder_holds_no_absolute_path(tiny_llama_dir, tmp_path):
    data = tmp_path / "data" / "ZsRE.json"
    data.parent.mkdir()
    data.write_text(json.dumps(RECORDS), encoding="utf-8")
    model = EditableModel.from_pretrained(str(tiny_llama_dir))
    assert Path(model.name_or_path).is_absolute()  # the model does know where it came from
    out = tmp_path / "results"
    # IKE with k=0 (the fact alone in context) is cheap; its ``pool`` hparam is a path
    kw = dict(dataset="zsre", data=str(data), method="ike", n=2, hparams={"k": 0, "pool": str(data)}, out=out,
              progress=False, generation=False)
    summary = run_knowedit(model, **kw)
    assert summary["model"] == tiny_llama_dir.name and summary["hparams"]["pool"] == "ZsRE.json"
    assert not Path(summary["data"]).is_absolute()
    files = _written(out)
    assert {"zsre-ike-single.summary.json", "zsre-ike-single.meta.json", "zsre-ike-single.jsonl",
            "zsre-ike-single.md", "report.md"} <= set(files)
    for name, text in files.items():
        assert str(tmp_path) not in text and str(Path.home()) not in text, name
        assert not MACHINE_PATH.search(text), (name, MACHINE_PATH.search(text))
    # settings written with full paths (before runs recorded names) still match: the run resumes
    meta = out / "zsre-ike-single.meta.json"
    old = json.loads(meta.read_text(encoding="utf-8"))
    old.update(model=str(tiny_llama_dir), data=str(data), hparams={**old["hparams"], "pool": str(data)})
    meta.write_text(json.dumps(old), encoding="utf-8")
    again = run_knowedit(model, **kw)
    assert again["resumed_lines"] == 2 and again["edits_computed"] == 0


def test_saved_stack_names_its_base_model(tiny_llama_dir, tmp_path):
    model = EditableModel.from_pretrained(str(tiny_llama_dir))
    model.edit(Fact(prompt="The capital of France is", target_new=" Rome"), method="ft-m", num_steps=1)
    model.stack.save(tmp_path / "edits")
    manifest = json.loads((tmp_path / "edits" / "edits.json").read_text(encoding="utf-8"))
    assert manifest["base_model"] == tiny_llama_dir.name
