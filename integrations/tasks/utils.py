"""Loaders for the offline editwrap tasks (``custom_dataset: !function utils.<name>`` in the YAMLs).

The data ships inside the package (``data/*.jsonl``), so no dataset download is attempted.
Provenance of every file: ``_build_data.py`` beside this module and ``README.md``.
"""
from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def _load(name: str):
    import datasets

    rows = [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def mmlu_dev(**_: object):
    return _load("mmlu_dev")


def counterfact_mc(**_: object):
    return _load("counterfact_mc")


def counterfact_gen(**_: object):
    return _load("counterfact_gen")


def triviaqa(**_: object):
    return _load("triviaqa")
