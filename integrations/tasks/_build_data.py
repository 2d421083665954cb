"""Rebuild the offline task data in ``data/`` from real records already on disk (run by hand).

    python integrations/tasks/_build_data.py [DATA_DIR]

The KnowEdit/CounterFact files are found by dataset name (docs/data.md): in ``DATA_DIR`` when
given (a folder as for ``$EDITWRAP_DATA_DIR``), else as ``--data`` finds them. The shipped
``data/`` was built from 100-record samples of these files.

Sources (nothing is generated or paraphrased; records are selected and re-shaped only):

* ``mmlu_dev.jsonl`` -- the MMLU *dev* questions (5 per subject, 57 subjects) that lm-eval itself
  ships as chain-of-thought exemplars in ``lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json``
  (from Flan / chain-of-thought-hub). Question, options and the gold letter are parsed out of the
  prompt text; the worked rationale is dropped. Questions whose options do not parse are skipped.
* ``counterfact_mc.jsonl`` -- true object vs counterfactual object for the same prompt, from
  KnowEdit's ``counterfact_easyedit.json`` (CounterFact, Meng et al. 2022) and
  ``WikiData_counterfact.json`` (KnowEdit wiki_counterfact). The gold choice is the true object.
* ``counterfact_gen.jsonl`` -- greedy completion of a true fact: CounterFact's locality prompts
  (neighbourhood facts, with their true answer) and WikiData_counterfact prompts with ground truth.
* ``triviaqa.jsonl`` -- TriviaQA questions with answers from KnowEdit's Sanitation retain sets
  (``Sanitation.json`` locality and ``Sanitation_train.json`` K_R, which KnowEdit took from the
  TriviaQA data), de-duplicated by question.

None of these overlap WikiData_recent, the source of the knowedit-general preset's edits.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "data"


def _bit(s: str) -> int:
    return hashlib.sha256(s.encode()).digest()[0] & 1


def _load(kd: Path | None, name: str) -> Any:
    """A dataset file by name: from the folder ``kd`` when given, else as ``--data`` resolves it."""
    from editwrap.hub import find_local, lookup, resolve_data

    path = find_local(lookup(name), kd) if kd is not None else resolve_data(name)
    if path is None:
        raise SystemExit(f"{kd} holds none of {', '.join(lookup(name).candidates())} ({name}; docs/data.md)")
    return json.loads(path.read_text(encoding="utf-8"))


def mmlu_dev() -> list[dict]:
    src = Path(os.path.dirname(importlib.util.find_spec("lm_eval").origin)) / \
        "tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
    data = json.loads(src.read_text())
    out = []
    for subject, text in data.items():
        for block in text.split("\n\nQ: ")[1:]:
            m = re.match(r"(?s)(.*?)\n(\(A\) .*?)\nA: .*The answer is \(([A-J])\)", block)
            if not m:
                continue
            question, opts, gold = m.group(1).strip(), m.group(2), m.group(3)
            parts = re.split(r"\s*\(([A-J])\) ", " " + opts)[1:]
            letters, choices = parts[0::2], [p.strip() for p in parts[1::2]]
            if letters != [chr(65 + i) for i in range(len(letters))] or len(choices) != 4 or gold not in letters \
                    or not all(choices):
                continue
            out.append({"subject": subject, "question": question, "choices": choices, "answer": letters.index(gold)})
    return out


def counterfact_mc(kd: Path | None) -> list[dict]:
    out = []
    for src, recs in (("counterfact_easyedit", _load(kd, "counterfact:edit")),
                      ("WikiData_counterfact", _load(kd, "knowedit:WikiData_counterfact"))):
        for r in recs:
            true, new = str(r["ground_truth"]).strip(), str(r["target_new"]).strip()
            if not true or not new or true == new:
                continue
            gold = _bit(r["prompt"])
            choices = [new, true] if gold else [true, new]
            out.append({"source": src, "prompt": r["prompt"], "subject": r["subject"], "choices": choices,
                        "label": gold})
    return out


def counterfact_gen(kd: Path | None) -> list[dict]:
    out = []
    for r in _load(kd, "counterfact:edit"):
        out.append({"source": "counterfact_easyedit.locality", "prompt": r["locality_prompt"],
                    "answers": [r["locality_ground_truth"]]})
    for r in _load(kd, "knowedit:WikiData_counterfact"):
        out.append({"source": "WikiData_counterfact", "prompt": r["prompt"], "answers": [str(r["ground_truth"])]})
    return out


def triviaqa(kd: Path | None) -> list[dict]:
    seen, out = set(), []
    recs = [("Sanitation.locality", r) for r in _load(kd, "knowedit:Sanitation")["locality"]]
    recs += [("Sanitation_train.K_R", r) for r in _load(kd, "knowedit:Sanitation_train")["K_R"]]
    for src, r in recs:
        q = r["question"].strip().strip('"').rstrip("?").strip()
        if q in seen:
            continue
        seen.add(q)
        out.append({"source": src, "question": q, "answers": [r["ground_truth"]]})
    return out


def main(argv: list[str]) -> None:
    kd = Path(argv[0]) if argv else None
    OUT.mkdir(exist_ok=True)
    for name, rows in (("mmlu_dev", mmlu_dev()), ("counterfact_mc", counterfact_mc(kd)),
                       ("counterfact_gen", counterfact_gen(kd)), ("triviaqa", triviaqa(kd))):
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} docs")


if __name__ == "__main__":
    main(sys.argv[1:])
