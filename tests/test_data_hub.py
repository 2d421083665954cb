"""Dataset names (``knowedit:ZsRE``): a local folder in both layouts, the Hugging Face cache offline,
the one clear error when nothing is there, ``editwrap data knowedit`` with a fake downloader, and
runs that record the data by name. No network: every Hub call is offline or faked."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from editwrap import hub
from editwrap.evals.datasets import load_dataset
from editwrap.evals.provenance import data_label, model_label, model_name
from editwrap.evals.runner import load_records, mixed_files

ROOT = Path(__file__).resolve().parents[1]


def _zsre(i: int) -> dict:
    return {"subject": f"Subject {i}", "target_new": f"New {i}", "prompt": f"What is Subject {i} known for?",
            "ground_truth": [f"Old {i}"], "rephrase_prompt": f"Subject {i} is known for what?",
            "cond": f"Old {i} >> New {i} || What is Subject {i} known for?",
            "locality": {"Relation_Specificity": [{"prompt": f"Where was Subject {i} born?",
                                                   "ground_truth": ["Town"]}]},
            "portability": {"Reasoning": [{"prompt": f"Why is Subject {i} known?", "ground_truth": "Because"}]}}


def _fact(i: int, ground_truth: bool) -> dict:
    r = {"subject": f"Thing {i}", "prompt": f"The colour of Thing {i} is", "target_new": "blue",
         "portability": {}, "locality": {"Relation_Specificity": [{"prompt": f"Thing {i} is made of",
                                                                   "ground_truth": [["wood"]]}]}}
    return {**r, "ground_truth": "red"} if ground_truth else r


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails the test: resolving must not reach out."""
    def refuse(*a, **kw):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def offline_env(monkeypatch, tmp_path, no_network):
    """HF_HUB_OFFLINE=1, an empty Hugging Face cache in tmp_path, no local copy."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv(hub.DATA_DIR_ENV, raising=False)
    return tmp_path / "hf" / "hub"


def test_names_parse_case_insensitively_and_paths_are_not_names(tmp_path, monkeypatch):
    assert hub.lookup("knowedit:zsre").name == "knowedit:ZsRE"
    assert hub.lookup("knowedit:recent_train").name == "knowedit:WikiData_recent_train"
    assert hub.lookup("ZSRE_MEND:Eval").flat == "zsre_mend_eval.json"
    assert hub.is_data_name("knowedit:ZsRE") and hub.is_data_name("knowedit")
    assert not hub.is_data_name("ZsRE.json") and not hub.is_data_name(str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset name 'knowedit:ZsRE2'; known: knowedit:ZsRE"):
        hub.lookup("knowedit:ZsRE2")
    with pytest.raises(ValueError, match="names a collection"):
        hub.resolve_data("knowedit")
    _write(tmp_path / "knowedit:ZsRE", [_zsre(0)])  # an existing path wins over the name
    monkeypatch.chdir(tmp_path)
    assert hub.resolve_data("knowedit:ZsRE") == Path("knowedit:ZsRE")
    assert len(load_dataset("zsre", "knowedit:ZsRE")) == 1


@pytest.mark.parametrize("layout", ["flat", "hub"])
def test_local_folder_in_either_layout(offline_env, tmp_path, monkeypatch, layout):
    local = tmp_path / "copy"
    rel = {"flat": "ZsRE.json", "hub": "benchmark/ZsRE/ZsRE-test-all.json"}[layout]
    f = _write(local / rel, [_zsre(i) for i in range(3)])
    rec = _write(local / {"flat": "WikiData_recent.json", "hub": "benchmark/wiki_recent/recent_test.json"}[layout],
                 [_fact(i, False) for i in range(2)])
    cf = _write(local / {"flat": "WikiData_counterfact.json", "hub": "benchmark/wiki_counterfact/test_cf.json"}[layout],
                [_fact(i, True) for i in range(2)])
    monkeypatch.setenv(hub.DATA_DIR_ENV, str(local))
    assert hub.resolve_data("knowedit:ZsRE") == f
    ds = load_dataset("zsre", "knowedit:zsre")
    assert len(ds) == 3 and ds[0].target_new == "New 0" and ds[0].rephrase == ["Subject 0 is known for what?"]
    assert len(load_dataset("zsre", local)) == 3  # the folder itself, as --data DIR
    assert mixed_files("knowedit") == {"zsre": f, "recent": rec, "counterfact": cf} == mixed_files(local)
    items, sources, _ = load_records("mixed", "knowedit", seed=0)
    assert len(items) == 7 and sorted(set(sources)) == ["counterfact", "recent", "zsre"]
    # a run records the name, also when given the path inside the local copy
    assert data_label("knowedit:zsre", tmp_path / "run") == "knowedit:ZsRE" == data_label(f, tmp_path / "run")
    assert data_label("knowedit", tmp_path / "run") == "knowedit"


def test_offline_empty_cache_gives_one_clear_error(offline_env):
    with pytest.raises(hub.DataNotFoundError) as e:
        hub.resolve_data("knowedit:ZsRE")
    msg = str(e.value)
    assert "`editwrap data knowedit --only ZsRE`" in msg and "EDITWRAP_DATA_DIR" in msg
    assert "HF_HUB_OFFLINE=1" in msg and "ZsRE.json" in msg and "benchmark/ZsRE/ZsRE-test-all.json" in msg
    with pytest.raises(hub.DataNotFoundError, match="no Hugging Face Hub repository from its authors|"
                                                    "No Hugging Face Hub repository from its authors"):
        hub.resolve_data("zsre_mend:train")
    with pytest.raises(hub.DataNotFoundError, match="rome.baulab.info/data/dsets/counterfact.json"):
        hub.resolve_data("counterfact:rome")


def test_cli_offline_error_has_no_traceback(offline_env, capsys):
    from editwrap.cli import main

    rc = main(["eval", "knowedit", "--dataset", "zsre", "--data", "knowedit:ZsRE", "--method", "rome", "--n", "1",
               "--out", str(offline_env.parent / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("editwrap: error: knowedit:ZsRE is not on this machine")
    assert "editwrap data knowedit --only ZsRE" in err and "EDITWRAP_DATA_DIR" in err and "Traceback" not in err
    assert not (offline_env.parent / "run").exists()  # stopped before loading a model or writing a run


def test_cli_process_offline_exit_code_and_message(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf/hub"), "PYTHONPATH": str(ROOT)}
    env.pop(hub.DATA_DIR_ENV, None)
    r = subprocess.run([sys.executable, "-m", "editwrap.cli", "data", "knowedit", "--only", "ZsRE,WikiBio"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "editwrap: error: knowedit:ZsRE is not on this machine" in r.stderr
    assert "`editwrap data knowedit --only ZsRE`" in r.stderr and "EDITWRAP_DATA_DIR" in r.stderr


def _hub_cache(cache: Path, files: dict[str, bytes], rev: str = "6d218881e60c7c8be836bd2befd598eb3b318be4") -> Path:
    """A dataset cache as huggingface_hub writes it: blobs/<hash>, snapshots/<rev>/<path> -> blob, refs/main."""
    repo = cache / "datasets--zjunlp--KnowEdit"
    for path, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        snap = repo / "snapshots" / rev / path
        snap.parent.mkdir(parents=True, exist_ok=True)
        snap.symlink_to(os.path.relpath(blob, snap.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return repo / "snapshots" / rev


def test_hub_cache_resolves_offline_without_network(offline_env, tmp_path):
    snap = _hub_cache(offline_env, {"benchmark/ZsRE/ZsRE-test-all.json": json.dumps([_zsre(0), _zsre(1)]).encode(),
                                    "benchmark/WikiBio/wikibio-test-all.json": b"[]"})
    p = hub.resolve_data("knowedit:ZsRE")
    assert p == snap / "benchmark/ZsRE/ZsRE-test-all.json" and len(load_dataset("zsre", "knowedit:ZsRE")) == 2
    assert hub.name_of_path(p) == "knowedit:ZsRE" and data_label(p, tmp_path / "run") == "knowedit:ZsRE"
    assert hub.locate(hub.lookup("knowedit:WikiBio")) is not None
    assert hub.locate(hub.lookup("knowedit:WikiBio_train")) is None


class FakeHub:
    """Stands in for ``huggingface_hub.hf_hub_download``: copies a fixture into a cache folder."""

    def __init__(self, cache: Path, files: dict[str, Path]):
        self.cache, self.files, self.calls = cache, files, []

    def __call__(self, repo_id, filename, *, repo_type=None, cache_dir=None, local_files_only=False, **kw):
        self.calls.append((repo_id, filename, repo_type, local_files_only))
        if filename not in self.files or (local_files_only and not (self.cache / filename).exists()):
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError(f"{filename} is not in the fake cache")
        dst = self.cache / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.files[filename], dst)
        return str(dst)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, no_network):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv(hub.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    src = tmp_path / "published"
    files = {"benchmark/wiki_recent/recent_test.json": _write(src / "recent_test.json",
                                                              [_fact(i, False) for i in range(4)]),
             "benchmark/ZsRE/ZsRE-test-all.json": _write(src / "ZsRE-test-all.json", [_zsre(i) for i in range(3)])}
    fake = FakeHub(tmp_path / "hf", files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    return fake


def test_data_command_downloads_checks_and_copies(fake_hub, tmp_path, capsys, monkeypatch):
    from editwrap.cli import main

    dest = tmp_path / "copy"
    assert main(["data", "knowedit", "--only", "WikiData_recent", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert fake_hub.calls == [("zjunlp/KnowEdit", "benchmark/wiki_recent/recent_test.json", "dataset", False)]
    assert "knowedit:WikiData_recent" in out and "4 records (no published count to check)" in out
    assert (dest / "WikiData_recent.json").read_bytes() == (tmp_path / "published/recent_test.json").read_bytes()
    monkeypatch.setenv(hub.DATA_DIR_ENV, str(dest))  # the copied folder serves offline machines
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve_data("knowedit:WikiData_recent") == dest / "WikiData_recent.json"


def test_data_command_rejects_a_wrong_count(fake_hub, capsys):
    from editwrap.cli import main

    assert main(["data", "knowedit", "--only", "ZsRE"]) == 2  # the fixture has 3 records, the published file 1301
    err = capsys.readouterr().err
    assert "editwrap: error: knowedit:ZsRE:" in err and "has 3 records, the published file 1301" in err
    assert "Traceback" not in err


def test_check_file_rejects_a_wrong_sha256(tmp_path):
    f = _write(tmp_path / "a.json", [_zsre(0), _zsre(1)])
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    good = hub.DataFile(name="knowedit:X", flat="X.json", dataset="zsre", split="test", records=2, sha256=digest)
    info = hub.check_file(good, f)
    assert info == {"records": 2, "sha256": digest, "checked": ["records", "sha256"]}
    bad = hub.DataFile(name="knowedit:X", flat="X.json", dataset="zsre", split="test", records=2, sha256="0" * 64)
    with pytest.raises(hub.DataCheckError, match=f"has sha256 {digest}, the published file 0000"):
        hub.check_file(bad, f)
    assert hub.count_records({"success": [1, 2], "locality": [3]}) == {"success": 2, "locality": 1}


def test_resolve_downloads_when_online_and_not_cached(fake_hub):
    p = hub.resolve_data("knowedit:WikiData_recent")
    assert [c[3] for c in fake_hub.calls] == [True, False]  # the cache first, then the (fake) Hub
    assert len(load_dataset("recent", p)) == 4


def test_model_label_and_name_carry_no_machine_path(tmp_path):
    emb = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct-v1"
    emb.mkdir(parents=True)
    assert model_label(str(emb), tmp_path / "run") == "embedded:smollm2-135m"
    assert model_name(str(emb)) == model_name("embedded:smollm2-135m") == "embedded:smollm2-135m"
    assert model_label("HuggingFaceTB/SmolLM2-135M", tmp_path) == "HuggingFaceTB/SmolLM2-135M"
    other = tmp_path / "models" / "mine"
    other.mkdir(parents=True)
    assert model_label(str(other), tmp_path / "runs" / "a") == "mine"  # outside the run folder: its name
    assert model_label(str(other), tmp_path) == "models/mine"  # inside: relative to it


def test_run_records_the_dataset_name(tiny_llama, tmp_path, monkeypatch):
    from editwrap.evals import run_knowedit

    monkeypatch.setenv(hub.DATA_DIR_ENV, str(tmp_path / "copy"))
    _write(tmp_path / "copy" / "ZsRE.json", [_zsre(i) for i in range(2)])
    s = run_knowedit(tiny_llama, "zsre", "knowedit:ZsRE", "ft-m", n=2, hparams={"num_steps": 1},
                     out=tmp_path / "run", progress=False, generation=False)
    assert s["data"] == "knowedit:ZsRE" and s["data_sha256"]
    for f in (tmp_path / "run").glob("*.json*"):
        assert str(tmp_path) not in f.read_text(), f.name
    plain = _write(tmp_path / "elsewhere" / "z.json", [_zsre(0)])
    s = run_knowedit(tiny_llama, "zsre", plain, "ft-m", n=1, hparams={"num_steps": 1}, out=tmp_path / "run2",
                     progress=False, generation=False)
    assert s["data"] == "../elsewhere/z.json"


def test_cli_names_the_dataset_a_name_is_read_as(offline_env, capsys):
    from editwrap.cli import main

    assert main(["eval", "knowedit", "--dataset", "zsre", "--data", "knowedit:WikiBio", "--method", "rome"]) == 2
    assert "--data knowedit:WikiBio is a wikibio file: use --dataset wikibio" in capsys.readouterr().err
