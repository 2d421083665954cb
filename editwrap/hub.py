"""Dataset names (``knowedit:ZsRE``, ``counterfact:edit``, ``zsre_mend:eval``...) and where their files are.

A ``--data`` value is an explicit path, or a name ``<collection>:<file>`` from :data:`CATALOG`.
:func:`resolve_data` finds a name's file, in this order:

1. ``$EDITWRAP_DATA_DIR``: a local copy (offline machines). Both the Hub layout
   (``benchmark/ZsRE/ZsRE-test-all.json``) and short flat names (``ZsRE.json``, the names
   :data:`~editwrap.evals.datasets.DEFAULT_FILES` uses) are accepted;
2. the Hugging Face cache (``huggingface_hub.hf_hub_download``, ``local_files_only`` first);
3. unless ``HF_HUB_OFFLINE=1``: a download from the Hub, checked like ``editwrap data knowedit``.

Nothing found gives one :class:`DataNotFoundError` naming the command that fetches the file and
the variable that points at a local copy. Record counts and sha256 digests in the catalog are only
those checked against the published files (docs/data.md says which).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["DataFile", "CATALOG", "COLLECTIONS", "DATA_DIR_ENV", "DataNotFoundError", "DataCheckError",
           "lookup", "is_data_name", "resolve_data", "locate", "find_local", "name_of_path", "fetch", "check_file",
           "count_records", "hub_cache_dir", "offline"]

DATA_DIR_ENV = "EDITWRAP_DATA_DIR"
KNOWEDIT_REPO = "zjunlp/KnowEdit"
ROME_DSETS = "https://rome.baulab.info/data/dsets"
EASYEDIT_DATA = "EasyEdit's data archive (linked from github.com/zjunlp/EasyEdit, examples/README.md)"


@dataclass(frozen=True)
class DataFile:
    """One published data file: its name here, where it is published, and how it is checked."""

    name: str  #: e.g. ``knowedit:ZsRE``
    flat: str  #: short file name in a flat local folder (``ZsRE.json``)
    dataset: str  #: the ``--dataset`` format the file is read as
    split: str
    repo: str | None = None  #: Hub dataset repository, when one from the authors publishes it
    path: str | None = None  #: path inside ``repo`` (also accepted inside a local folder)
    source: str | None = None  #: where to get it when no Hub repository is known
    local: tuple[str, ...] = ()  #: other accepted paths inside a local folder (the source's own layout)
    records: int | None = None  #: record count, only where checked against the published file
    sha256: str | None = None  #: only where checked against the published file
    aliases: tuple[str, ...] = ()

    @property
    def task(self) -> str:
        return self.name.split(":", 1)[1]

    def candidates(self) -> list[str]:
        """Relative paths this file may have inside a local folder, in the order they are tried."""
        return [self.flat, *([self.path] if self.path else []), *self.local]


def _knowedit(task: str, path: str, dataset: str, split: str, records: int | None = None,
              sha256: str | None = None) -> DataFile:
    alias = dataset if split == "test" else f"{dataset}_{split}"  # knowedit:recent_train = WikiData_recent_train
    return DataFile(name=f"knowedit:{task}", flat=f"{task}.json", dataset=dataset, split=split, repo=KNOWEDIT_REPO,
                    path=path, records=records, sha256=sha256, aliases=(alias,))


_FILES = [
    _knowedit("ZsRE", "benchmark/ZsRE/ZsRE-test-all.json", "zsre", "test", 1301,
              "0e0214dda853a906ef02bef58c7ce2978af5a962e91fc4a10827e0125459905c"),
    _knowedit("WikiData_recent", "benchmark/wiki_recent/recent_test.json", "recent", "test"),
    _knowedit("WikiData_recent_train", "benchmark/wiki_recent/recent_train.json", "recent", "train", 570),
    _knowedit("WikiData_counterfact", "benchmark/wiki_counterfact/test_cf.json", "counterfact", "test"),
    _knowedit("WikiData_counterfact_train", "benchmark/wiki_counterfact/train_cf.json", "counterfact", "train"),
    _knowedit("WikiBio", "benchmark/WikiBio/wikibio-test-all.json", "wikibio", "test", 306,
              "00933f69b47d8281d01f1f4b84f3f266b7482a65a7d74022e660a8a9ca2264a4"),
    _knowedit("WikiBio_train", "benchmark/WikiBio/wikibio-train-all.json", "wikibio", "train", 464,
              "6ee88049c1c6c00d6f81d2d942350b6ec78b45917d2ec8a3eec3eafa89c2e209"),
    _knowedit("ConvSent", "benchmark/Convsent/blender_test.json", "convsent", "test", 800),
    _knowedit("ConvSent_val", "benchmark/Convsent/blender_val.json", "convsent", "val"),
    _knowedit("ConvSent_train", "benchmark/Convsent/blender_train.json", "convsent", "train"),
    _knowedit("Sanitation", "benchmark/trivia/trivia_qa_test.json", "sanitation", "test"),
    _knowedit("Sanitation_train", "benchmark/trivia/trivia_qa_train.json", "sanitation", "train"),
    # No Hub repository from their authors publishes these; a local copy is found by these names.
    DataFile(name="counterfact:edit", flat="counterfact_easyedit.json", dataset="counterfact_easyedit",
             split="edit", source=EASYEDIT_DATA + ": counterfact/counterfact-edit.json",
             local=("counterfact/counterfact-edit.json", "counterfact-edit.json")),
    DataFile(name="counterfact:train", flat="counterfact_easyedit_train.json", dataset="counterfact_easyedit",
             split="train", source=EASYEDIT_DATA + ": counterfact/counterfact-train.json",
             local=("counterfact/counterfact-train.json", "counterfact-train.json")),
    DataFile(name="counterfact:val", flat="counterfact_easyedit_val.json", dataset="counterfact_easyedit",
             split="val", source=EASYEDIT_DATA + ": counterfact/counterfact-val.json",
             local=("counterfact/counterfact-val.json", "counterfact-val.json")),
    DataFile(name="counterfact:rome", flat="counterfact.json", dataset="counterfact_rome", split="all",
             source=f"{ROME_DSETS}/counterfact.json"),
    DataFile(name="zsre_mend:eval", flat="zsre_mend_eval.json", dataset="zsre_mend", split="eval",
             source=f"{ROME_DSETS}/zsre_mend_eval.json", local=("zsre/zsre_mend_eval.json",)),
    DataFile(name="zsre_mend:train", flat="zsre_mend_train.json", dataset="zsre_mend", split="train",
             source=f"{ROME_DSETS}/zsre_mend_train.json", local=("zsre/zsre_mend_train.json",)),
]
#: every known file by its name
CATALOG: dict[str, DataFile] = {f.name: f for f in _FILES}
COLLECTIONS = tuple(dict.fromkeys(f.name.split(":")[0] for f in _FILES))
_BY_KEY = {f"{f.name.split(':')[0]}:{key}".lower(): f for f in _FILES for key in (f.task, *f.aliases)}


class DataNotFoundError(FileNotFoundError):
    """A dataset name whose file is neither local, nor cached, nor downloadable now."""


class DataCheckError(ValueError):
    """A downloaded file whose record count or sha256 is not the published one."""


def is_data_name(text: Any) -> bool:
    """``knowedit:ZsRE`` and the like (also a bare collection such as ``knowedit``); not a path."""
    if not isinstance(text, str) or os.path.exists(text):
        return False
    return text.lower() in COLLECTIONS or text.split(":", 1)[0].lower() in COLLECTIONS and ":" in text


def lookup(name: str) -> DataFile:
    """The catalog entry of ``name`` (case-insensitive; ``knowedit:zsre`` = ``knowedit:ZsRE``)."""
    entry = _BY_KEY.get(name.lower())
    if entry is None:
        coll = name.split(":", 1)[0].lower()
        known = [f.name for f in _FILES if f.name.startswith(coll + ":")] or list(CATALOG)
        raise ValueError(f"unknown dataset name {name!r}; known: {', '.join(known)} (docs/data.md)")
    return entry


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir() -> str | None:
    """The Hugging Face cache as the environment says now (None: huggingface_hub's default)."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return env
    return str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None


def find_local(entry: DataFile, folder: str | Path) -> Path | None:
    """The file of ``entry`` inside ``folder`` (flat name, Hub layout or the source's layout)."""
    for rel in entry.candidates():
        p = Path(folder) / rel
        if p.is_file():
            return p
    return None


def _hub_download(entry: DataFile, local_only: bool) -> Path:
    import huggingface_hub

    assert entry.repo is not None and entry.path is not None
    return Path(huggingface_hub.hf_hub_download(entry.repo, entry.path, repo_type="dataset",
                                                cache_dir=hub_cache_dir(), local_files_only=local_only))


def _cached(entry: DataFile) -> Path | None:
    if entry.repo is None:
        return None
    try:
        return _hub_download(entry, local_only=True)
    except (OSError, ValueError):  # LocalEntryNotFoundError is both
        return None


def locate(entry: DataFile) -> Path | None:
    """The file of ``entry`` in ``$EDITWRAP_DATA_DIR`` or the Hugging Face cache; never downloads."""
    local = os.environ.get(DATA_DIR_ENV)
    return (find_local(entry, local) if local else None) or _cached(entry)


def _not_found(entry: DataFile, reason: str = "") -> DataNotFoundError:
    local = os.environ.get(DATA_DIR_ENV)
    where = (f"${DATA_DIR_ENV} ({local}) holds none of {', '.join(entry.candidates())}" if local
             else f"${DATA_DIR_ENV} is not set")
    if entry.repo is None:
        return DataNotFoundError(
            f"{entry.name} is not on this machine: {where}. No Hugging Face Hub repository from its authors "
            f"publishes it; get it from {entry.source} and set {DATA_DIR_ENV} to the folder that holds it "
            f"(as {' or '.join(dict.fromkeys(entry.candidates()))}; docs/data.md)")
    cache = hub_cache_dir() or "the default Hugging Face cache"
    how = "HF_HUB_OFFLINE=1, so nothing was downloaded" if offline() else f"the download failed: {reason}"
    return DataNotFoundError(
        f"{entry.name} is not on this machine: {where}, and {cache} does not hold {entry.repo} {entry.path} "
        f"({how}). Fetch it where the Hub is reachable with `editwrap data knowedit --only {entry.task}`, "
        f"or set {DATA_DIR_ENV} to a folder holding {entry.flat} or {entry.path}")


def resolve_data(data: str | os.PathLike) -> Path:
    """The file for a ``--data`` value: an existing path as it is, a name via the local copy, the
    cache or (online) the Hub. Anything else is returned as a path (its reader reports it)."""
    if not is_data_name(data):
        return Path(data)
    text = str(data)
    if text.lower() in COLLECTIONS:
        raise ValueError(f"{text!r} names a collection; give one of its files, e.g. "
                         f"{next(f.name for f in _FILES if f.name.startswith(text.lower() + ':'))} "
                         "(a whole collection is read by --dataset mixed only)")
    entry = lookup(text)
    found = locate(entry)
    if found is not None:
        return found
    if entry.repo is None or offline():
        raise _not_found(entry)
    print(f"[editwrap] {entry.name} is not cached: downloading {entry.repo} {entry.path}", file=sys.stderr)
    return fetch([entry.name])[0][1]


def name_of_path(path: str | Path) -> str | None:
    """The dataset name of a file inside ``$EDITWRAP_DATA_DIR`` or the Hugging Face cache, else None."""
    p = Path(os.path.abspath(path))  # not resolve(): the cache's snapshot files are links to blobs
    local = os.environ.get(DATA_DIR_ENV)
    if local:
        try:
            rel = p.relative_to(os.path.abspath(local)).as_posix()
        except ValueError:
            rel = None
        hit = next((f for f in _FILES if rel in f.candidates()), None) if rel else None
        if hit is not None:
            return hit.name
    parts = p.parts
    for f in _FILES:
        if f.repo is None or f"datasets--{f.repo.replace('/', '--')}" not in parts:
            continue
        i = parts.index("snapshots") if "snapshots" in parts else -1
        if i >= 0 and "/".join(parts[i + 2:]) == f.path:
            return f.name
    return None


def count_records(data: Any) -> int | dict[str, int]:
    """Records in a loaded file: a list's length; for a dict of lists (Sanitation), each list's."""
    if isinstance(data, list):
        return len(data)
    if isinstance(data, dict):
        return {k: len(v) for k, v in data.items() if isinstance(v, list)}
    raise ValueError(f"expected a JSON list or object of records, got {type(data).__name__}")


def check_file(entry: DataFile, path: Path) -> dict[str, Any]:
    """Record count and sha256 of ``path``; raise :class:`DataCheckError` where they differ from
    the published ones. Returns ``{"records", "sha256", "checked"}``."""
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    try:
        records = count_records(json.loads(blob.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise DataCheckError(f"{entry.name}: {path} is not a JSON file of records ({e}); delete it and "
                             "download it again") from None
    if entry.records is not None and records != entry.records:
        raise DataCheckError(f"{entry.name}: {path} has {records} records, the published file {entry.records}; "
                             "delete it and download it again (or the file on the Hub has changed)")
    if entry.sha256 is not None and digest != entry.sha256:
        raise DataCheckError(f"{entry.name}: {path} has sha256 {digest}, the published file {entry.sha256}; "
                             "delete it and download it again (or the file on the Hub has changed)")
    checked = [k for k, v in (("records", entry.records), ("sha256", entry.sha256)) if v is not None]
    return {"records": records, "sha256": digest, "checked": checked}


def fetch(names: Iterable[str], dest: str | Path | None = None,
          progress: Callable[[str], None] | None = None) -> list[tuple[DataFile, Path, dict[str, Any]]]:
    """Download ``names`` from the Hub into the Hugging Face cache (reusing cached files), check
    each, and with ``dest`` also copy them there under their flat names (a folder for
    ``$EDITWRAP_DATA_DIR``). Returns (entry, path, check result) per file."""
    import shutil

    out = []
    for name in names:
        entry = lookup(name)
        if entry.repo is None:
            raise _not_found(entry)
        if progress:
            progress(f"{entry.name}: {entry.repo} {entry.path}")
        try:
            path = _hub_download(entry, local_only=offline())
        except Exception as e:  # network, HTTP and missing-entry errors all mean "not obtainable now"
            raise _not_found(entry, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        info = check_file(entry, path)
        if dest is not None:
            Path(dest).mkdir(parents=True, exist_ok=True)
            path = Path(shutil.copyfile(path, Path(dest) / entry.flat))
        out.append((entry, path, info))
    return out
