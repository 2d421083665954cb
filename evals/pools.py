"""Where a run's records come from: one dataset file, or the pool ``--dataset mixed`` draws from.

A mixed pool is ``knowedit`` (the collection: ZsRE + WikiData_recent + WikiData_counterfact), a
directory holding those three files, or a comma-separated list of files and dataset names
(``counterfact_easyedit.json,ZsRE.json`` or ``counterfact:edit,knowedit:ZsRE``). Each file of a
list is read in its own format (from its catalog name, its KnowEdit file name, or the JSON's keys;
``format=path`` names it), so every record keeps its own probes. The pool (the files' records in
the order given) is shuffled with the run's seed and the first ``n`` are edited: a larger ``n``
extends a smaller run.
"""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any, Sequence

from editwrap.hub import is_data_name, lookup, resolve_data
from editwrap.records import _read, detect_format

from .datasets import DATASETS, DEFAULT_FILES, folder_file, load_dataset
from .provenance import data_label

__all__ = ["MIXED_SOURCES", "mixed_pool", "mixed_files", "load_records", "data_sha256", "pool_label", "is_data_list"]

MIXED_SOURCES = ("zsre", "recent", "counterfact")
_NOT_FACTS = ("convsent", "sanitation")  # their records are not edit facts with probes
_BY_FILE = {v.lower(): k for k, v in DEFAULT_FILES.items()}
_HOW = ("give knowedit, a directory holding {files}, or two or more dataset files or names separated by commas "
        "(e.g. --data counterfact_easyedit.json,ZsRE.json; format=path names a file's format)")


def is_data_list(data: Any) -> bool:
    """A list of files/names: a Python sequence, or a comma-separated string that is not a path."""
    if isinstance(data, (list, tuple)):
        return True
    return isinstance(data, str) and "," in data and not os.path.exists(data)


def _parts(data: Any) -> list[str]:
    parts = list(data) if isinstance(data, (list, tuple)) else str(data).split(",")
    return [str(p).strip() for p in parts if str(p).strip()]


def _entry(part: str, k: int) -> tuple[str, Path]:
    """(format, file) of one list item; errors name the item and what to give instead."""
    where = f"--data item {k} ({part!r})"
    fmt, _, rest = ("", "", "") if Path(part).is_file() else part.partition("=")
    if rest and fmt in DATASETS:
        fmt, part = fmt, rest
    elif rest:
        raise ValueError(f"{where}: unknown format {fmt!r} before '='; use one of {', '.join(DATASETS)}")
    else:
        fmt = ""
    if is_data_name(part):
        entry = lookup(part)  # unknown name -> ValueError listing the known ones
        path, fmt = resolve_data(part), fmt or entry.dataset
    else:
        path = Path(part)
        if not path.is_file():
            raise ValueError(f"{where}: no such file and not a dataset name (knowedit:ZsRE, counterfact:edit, ...; "
                             f"`editwrap data list`)")
        try:
            fmt = fmt or _BY_FILE.get(path.name.lower()) or detect_format(_read(path))
        except ValueError as e:
            raise ValueError(f"{where}: cannot tell its format ({e}); name it as format=path, format one of "
                             f"{', '.join(DATASETS)}") from None
    if fmt in _NOT_FACTS:
        raise ValueError(f"{where} is a {fmt} file; a mixed pool holds fact records (not ConvSent or Sanitation)")
    return fmt, path


def mixed_pool(data: Any) -> list[tuple[str, str, Path]]:
    """(source label, format, file) of every file ``--dataset mixed`` draws from (module doc).
    A label is the format; a second file of the same format adds its file stem (``zsre:ZsRE_2``)."""
    if not is_data_list(data):
        if is_data_name(data) and str(data).lower() == "knowedit":
            return [(s, s, resolve_data(f"knowedit:{s}")) for s in MIXED_SOURCES]
        d = Path(data)
        if not d.is_dir():
            raise ValueError(f"--data for --dataset mixed: "
                             f"{_HOW.format(files=', '.join(DEFAULT_FILES[s] for s in MIXED_SOURCES))}; got {data}")
        return [(s, s, folder_file(d, s)) for s in MIXED_SOURCES]
    parts = _parts(data)
    if len(parts) < 2:
        raise ValueError(f"--data for --dataset mixed lists one file ({parts[0] if parts else 'none'}); "
                         f"use --dataset <its format> for one file, or list two or more")
    pool: list[tuple[str, str, Path]] = []
    for k, part in enumerate(parts, 1):
        fmt, path = _entry(part, k)
        label = fmt if all(lab != fmt for lab, _, _ in pool) else f"{fmt}:{path.stem}"
        pool.append((label, fmt, path))
    return pool


def mixed_files(data: Any) -> dict[str, Path]:
    """``{source label: file}`` of :func:`mixed_pool`."""
    return {label: path for label, _, path in mixed_pool(data)}


def load_records(dataset: str, data: Any, n: int | None = None, *, seed: int = 0) -> tuple[list, list, list]:
    """(items, sources, retain probes). ``data``: a file, a directory or a dataset name
    (``knowedit:ZsRE``; :mod:`editwrap.hub`). ``mixed``: the records of :func:`mixed_pool`'s files,
    shuffled with ``seed`` (the first ``n`` of one fixed order, so a larger ``n`` extends a smaller run)."""
    if dataset == "mixed":
        pool = [(label, f) for label, fmt, path in mixed_pool(data) for f in load_dataset(fmt, path)]
        random.Random(seed).shuffle(pool)
        pool = pool[:n] if n is not None else pool
        return [f for _, f in pool], [s for s, _ in pool], []
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join((*DATASETS, 'mixed'))}")
    if is_data_list(data):
        raise ValueError(f"--data lists several files; a list is read by --dataset mixed only (got --dataset "
                         f"{dataset})")
    ds = load_dataset(dataset, data, n=n, seed=seed)
    return list(ds), [dataset] * len(ds), list(ds.locality)


def data_sha256(data: Any) -> str:
    """Hash of the dataset file; of the top-level JSON files of a dataset folder; of the three
    files ``mixed`` reads for ``knowedit``; of a list's files in the order given."""
    if is_data_list(data):
        files: Sequence[Path] = [path for _, _, path in mixed_pool(data)]
    elif is_data_name(data) and str(data).lower() == "knowedit":
        files = sorted(mixed_files(data).values(), key=lambda f: f.name)
    else:
        p = resolve_data(data)
        if not p.is_dir():
            return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        files = sorted(p.glob("*.json"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def pool_label(data: Any, run_dir: str | Path) -> str:
    """:func:`~editwrap.evals.provenance.data_label`, item by item for a list (``format=`` kept)."""
    if not is_data_list(data):
        return data_label(data, run_dir)
    out = []
    for part in _parts(data):
        fmt, _, rest = part.partition("=")
        named = bool(rest) and fmt in DATASETS
        out.append((f"{fmt}=" if named else "") + data_label(rest if named else part, run_dir))
    return ",".join(out)
