"""Training pools for trained editors (MEND, SERAC) and IKE demonstrations, with the evaluation
records held out, so an in-domain score is a held-out score."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from editwrap.facts import Fact, load_facts

from .datasets import load_dataset
from .pools import is_data_list
from editwrap.hub import resolve_data

__all__ = ["training_records"]


def _norm(text: str | None) -> str:
    return " ".join((text or "").lower().split())


def training_records(paths: Sequence[str | Path], n: int | None = None,
                     exclude: Sequence[str | Path] = (), exclude_n: int | None = None) -> tuple[list[Fact], str]:
    """Edit records for training an editor (MEND, SERAC, IKE pools), as Facts.

    Each path is a dataset file in any supported format (detected), a dataset name
    (``knowedit:ZsRE``, ``zsre_mend:train``; :mod:`editwrap.hub`) or a file of editwrap Facts;
    ``n`` keeps the first n of each. ``exclude``: evaluation files whose records must not leak into
    training — a training record is dropped when its subject or prompt (case/space-insensitive)
    occurs in the first ``exclude_n`` records of any of them. An ``exclude`` *directory*, the
    name ``knowedit`` or a comma-separated list of files stands for ``--dataset mixed`` drawn from
    it (seed 0): the first ``exclude_n`` records of that draw, i.e. exactly the facts of a mixed run
    with ``--n exclude_n``. Returns (records, "path1,path2").
    """
    banned: set[str] = set()
    for e in exclude:
        if Path(e).is_dir() or str(e).lower() == "knowedit" or is_data_list(e):  # what --dataset mixed draws from
            from .runner import load_records

            held = load_records("mixed", e, n=exclude_n)[0]
        else:
            held = load_dataset(None, e, n=exclude_n, skip_malformed=True)
        for f in held:
            if isinstance(f, Fact):
                banned.update(x for x in (_norm(f.subject), _norm(f.prompt)) if x)
    records: list[Fact] = []
    for p in paths:
        got = [f for f in load_dataset(None, p, skip_malformed=True) if isinstance(f, Fact)]
        if not got:  # a file of editwrap Facts (JSON list or JSONL)
            got = load_facts(resolve_data(p))
        got = [f for f in got if _norm(f.subject) not in banned and _norm(f.prompt) not in banned]
        records += got[:n]
    if not records:
        raise ValueError(f"no usable edit records in {', '.join(map(str, paths))}"
                         + (" after --exclude" if banned else ""))
    return records, ",".join(map(str, paths))
