"""The Edit record and the (live) view of a model's edit stack, with JSON+safetensors save/load."""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import uuid
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file

from .entries.base import Entry, entry_from_saved
from .errors import StackError
from ._version import __version__
from .facts import Fact
from .ops.exact import RETIRED_HPARAMS
from .ops.fingerprint import checkpoint_probe, quantization_label, same_checkpoint
from .ops.journal import (JOURNAL, append_line, fsync_dir, fsync_file, fsync_tree, ids_digest, last_line, lines,
                          manifest_text, read_header)
from .paths import portable_path

if TYPE_CHECKING:
    from .model import EditableModel

__all__ = ["Edit", "EditStack", "StackError", "load_stack_dir", "FORMAT_VERSION"]

FORMAT_VERSION = 1
#: a stack saved in several safetensors shards by earlier appends (still read)
SHARDED_FORMAT = 2
#: a stack whose appends are lines of ``edits.journal.jsonl`` (``save_stack_dir(..., append=True)``)
JOURNAL_FORMAT = 3


class Edit:
    """One entry of the stack: which method made it, from which facts, and its payload entry.

    Returned already pushed by ``EditableModel.edit``; ``edit.pop()`` removes it again, and
    ``with model.edit(...):`` pops it on exit.
    """

    def __init__(self, method: str, facts: Sequence[Fact], hparams: dict[str, Any], entry: Entry,
                 *, id: str | None = None, depends_on: Sequence[str] | None = None,
                 created: str | None = None, info: dict[str, Any] | None = None,
                 edit_set: str | None = None) -> None:
        self.id = id or uuid.uuid4().hex[:12]
        #: the edit set this edit belongs to (None: applies always; :mod:`editwrap.sets`)
        self.edit_set = edit_set
        self.method = method
        self.facts = list(facts)
        self.hparams = dict(hparams)
        self.entry = entry
        self.depends_on = list(depends_on or [])
        self.created = created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.info = dict(info or {})  # e.g. compute time, final loss: reported, not needed to apply
        self._host: weakref.ReferenceType | None = None

    @property
    def host(self) -> "EditableModel | None":
        return self._host() if self._host is not None else None

    @property
    def applied(self) -> bool:
        h = self.host
        return h is not None and any(e is self for e in h._edits)

    def pop(self) -> "Edit":
        """Remove this edit from its model (the top one is popped; a lower one is removed)."""
        h = self.host
        if h is None or not self.applied:
            raise StackError(f"edit {self.id} is not on any model's stack")
        if h._edits[-1] is self:
            h.pop()
        else:
            h.remove(self)
        return self

    def __enter__(self) -> "Edit":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.applied:
            self.pop()

    def describe(self) -> str:
        f = self.facts[0] if self.facts else None
        what = f"{f.text_prompt!r} -> {f.target_new!r}" if f else ""
        more = f" (+{len(self.facts) - 1} more)" if len(self.facts) > 1 else ""
        return f"{self.id} {self.method:<8} {what}{more} [{self.entry.summary()}]"

    def __repr__(self) -> str:
        return f"Edit({self.describe()})"

    # -- serialisation ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {"id": self.id, "method": self.method, "kind": self.entry.kind,
                "facts": [f.to_json() for f in self.facts], "hparams": self.hparams,
                "depends_on": self.depends_on, "created": self.created, "info": self.info,
                "meta": self.entry.meta(), **({"edit_set": self.edit_set} if self.edit_set else {})}


class EditStack:
    """A read-only, ordered view of the edits applied to a model (bottom first)."""

    def __init__(self, host: "EditableModel") -> None:
        self._host = host

    @property
    def edits(self) -> list[Edit]:
        return list(self._host._edits)

    def __len__(self) -> int:
        return len(self._host._edits)

    def __iter__(self) -> Iterator[Edit]:
        return iter(self.edits)

    def __getitem__(self, i: int) -> Edit:
        return self._host._edits[i]

    def __repr__(self) -> str:
        lines = [f"EditStack({len(self)} entries{', merged' if self._host.is_merged else ''})"]
        lines += [f"  [{i}] {e.describe()}" for i, e in enumerate(self._host._edits)]
        return "\n".join(lines)

    def nbytes(self) -> int:
        return sum(e.entry.nbytes() for e in self._host._edits)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``edits.json`` + ``edits.safetensors`` atomically (temp dir, then rename)."""
        return save_stack_dir(self.edits, Path(path), self._host)

    def export_peft(self, path: str | os.PathLike, edit_set: str | Sequence[str] | None = None, **kw: Any) -> Path:
        """Write the side-car edits (all, or those ``model.using(edit_set)`` applies) as one PEFT LoRA
        adapter (:func:`editwrap.export.export_peft`)."""
        from .export import export_peft

        return export_peft(self._host, path, edit_set, **kw)

    def consolidate(self, edits: Any = None, method: str | None = None, **overrides: Any) -> Edit:
        """Re-solve MEMIT/AlphaEdit entries (all, a slice, or a list) jointly into one entry
        (:func:`editwrap.consolidate.consolidate`)."""
        from .consolidate import consolidate

        return consolidate(self._host, edits, method, **overrides)

    def retract(self, fact: Fact | str) -> "Edit | None":
        """Remove one fact wherever it lives (:func:`editwrap.consolidate.retract`)."""
        from .consolidate import retract

        return retract(self._host, fact)


def _write_entries(edits: Sequence[Edit], start: int, root: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Tensors (``"<i>/<name>"``) and manifest records of ``edits`` numbered from ``start``; entries
    with their own format (PEFT adapters) are written to ``root/entry-<i>``."""
    tensors, records = {}, []
    for i, e in enumerate(edits, start):
        for name, t in e.entry.tensors().items():
            tensors[f"{i}/{name}"] = t.detach().to("cpu").contiguous()
        if hasattr(e.entry, "save_extra"):
            extra = root / f"entry-{i}"
            shutil.rmtree(extra, ignore_errors=True)  # left by an append that never committed
            extra.mkdir()
            e.entry.save_extra(extra)
        records.append(e.manifest())
    return tensors, records


def save_stack_dir(edits: Sequence[Edit], path: Path, host: "EditableModel", append: bool = False) -> Path:
    """Write ``edits.json`` + ``edits.safetensors`` into a new directory renamed into place.

    ``append``: when ``path`` already holds a stack of this base whose edits are the first ones of
    ``edits`` (same ids, in order), write only the new edits: one more safetensors shard, committed
    by one fsynced line of ``edits.journal.jsonl``. Its cost does not depend on the size of the
    stack: the check reads the manifest's first line and the journal's last line, not the records.
    Otherwise (and always without ``append``) the whole stack is rewritten as one file; with
    ``append`` in the journal's format (:data:`JOURNAL_FORMAT`), so the next append is as cheap."""
    path = Path(path)
    fingerprint = host.fingerprint()
    if append and _append(edits, path, host, fingerprint):
        return path
    header = _header(host, fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        tensors, records = _write_entries(edits, 0, tmp)
        head = _journal_header(header, edits, []) if append else header
        (tmp / "edits.json").write_text(manifest_text(head, records), encoding="utf-8")
        save_file(tensors, str(tmp / "edits.safetensors"))
        _keep_foreign(path, tmp)
        fsync_tree(tmp)  # durable before the rename makes it the stack
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:6]}")
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _keep_foreign(path: Path, tmp: Path) -> None:
    """Files a rewrite does not own (a server's audit log, notes) move into the new directory as
    hard links to the same files, so appends to them are never lost."""
    if not path.is_dir():
        return
    for f in path.iterdir():
        if f.is_file() and not (f.name.startswith("edits") and f.suffix in (".json", ".safetensors")
                                or f.name == JOURNAL or f.name.startswith(".edits.json.tmp-")):
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)


def _header(host: "EditableModel", fingerprint: str) -> dict[str, Any]:
    """The manifest's description of the base model (checked on load)."""
    return {"format_version": FORMAT_VERSION, "editwrap_version": __version__, "base_fingerprint": fingerprint,
            "base_model": portable_path(host.name_or_path), "base_checkpoint": checkpoint_probe(host),
            "base_quantization": quantization_label(host)}


def _journal_header(header: dict[str, Any], edits: Sequence[Edit], shards: list[str]) -> dict[str, Any]:
    """The manifest header of a stack that takes journal lines: what an append checks against."""
    ids = [e.id for e in edits]
    return {**header, "format_version": JOURNAL_FORMAT, "journal_id": uuid.uuid4().hex[:12],
            **({"shards": shards} if shards else {}), "count": len(ids), "last_id": ids[-1] if ids else None,
            "ids_digest": ids_digest(ids)}


def _saved_state(edits: Sequence[Edit], path: Path, host: "EditableModel", fingerprint: str) -> dict[str, Any] | None:
    """The journal id, count and ids digest of the stack saved in ``path`` when ``edits`` continues
    it; None when it does not (a rewrite follows). A manifest not yet in the journal's format is
    read whole once and rewritten in it, keeping its records and shards."""
    mf, jl = path / "edits.json", path / JOURNAL
    head = read_header(mf)
    if head is None or head.get("format_version") != JOURNAL_FORMAT:
        try:
            old = json.loads(mf.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        k = len(old.get("edits", []))
        if (old.get("format_version", 0) > SHARDED_FORMAT or old.get("base_fingerprint") != fingerprint
                or k == 0 or k > len(edits) or [r.get("id") for r in old["edits"]] != [e.id for e in edits[:k]]):
            return None
        jl.unlink(missing_ok=True)  # one kept by an older editwrap's rewrite: not ours
        head = _journal_header(_header(host, fingerprint), edits[:k], list(old.get("shards", [])))
        tmp = path / f".edits.json.tmp-{uuid.uuid4().hex[:6]}"
        try:
            tmp.write_text(manifest_text(head, old["edits"]), encoding="utf-8")
            fsync_file(tmp)
            os.replace(tmp, mf)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path)
        return head
    if head.get("base_fingerprint") != fingerprint:
        return None
    try:
        last = last_line(jl)
    except ValueError:
        return None
    state = last if last is not None and last.get("journal_id") == head["journal_id"] else head
    k = state.get("count", 0)
    if (k == 0 or k > len(edits) or edits[k - 1].id != state.get("last_id")
            or ids_digest([e.id for e in edits[:k]]) != state.get("ids_digest")):
        return None
    return {**state, "journal_id": head["journal_id"]}


def _append(edits: Sequence[Edit], path: Path, host: "EditableModel", fingerprint: str) -> bool:
    """The ``append`` case of :func:`save_stack_dir`; False when it does not apply."""
    state = _saved_state(edits, path, host, fingerprint)
    if state is None:
        return False
    k = state["count"]
    if k == len(edits):
        return True
    tensors, records = _write_entries(edits[k:], k, path)
    shard = path / f"edits-{k:06d}.safetensors"  # overwrites one left by an append cut before its line
    if tensors:
        save_file(tensors, str(shard))
        fsync_file(shard)
    else:
        shard.unlink(missing_ok=True)
    for i in range(k, len(edits)):
        if (path / f"entry-{i}").is_dir():
            fsync_tree(path / f"entry-{i}")
    fsync_dir(path)
    ids = [e.id for e in edits]
    append_line(path / JOURNAL, {"journal_id": state["journal_id"], "shard": shard.name if tensors else None,
                                 "count": len(ids), "last_id": ids[-1], "ids_digest": ids_digest(ids),
                                 "edits": records})  # the commit point
    return True


def load_stack_dir(path: str | os.PathLike, expected_fingerprint: str | None = None,
                   checkpoint: dict | None = None) -> list[Edit]:
    """Rebuild the edits of a saved stack; refuse one made for another base model.

    With ``checkpoint`` (the target's :func:`~editwrap.ops.fingerprint.checkpoint_probe`), a stack
    whose fingerprint differs only because the same checkpoint was loaded quantized (or in another
    dtype) is accepted with a warning.
    """
    path = Path(path)
    mf = path / "edits.json"
    if not mf.exists():
        raise StackError(f"{path} is not a saved edit stack (no edits.json); save one with model.stack.save(dir)")
    manifest = json.loads(mf.read_text(encoding="utf-8"))
    if manifest.get("format_version", 0) > JOURNAL_FORMAT:
        raise StackError(f"{path} was written by a newer editwrap (format {manifest['format_version']}); upgrade "
                         f"editwrap")
    fp = manifest.get("base_fingerprint")
    if expected_fingerprint is not None and fp != expected_fingerprint and checkpoint is not None and \
            same_checkpoint(manifest.get("base_checkpoint"), checkpoint):
        import warnings

        warnings.warn(
            f"stack {path} was computed on {manifest.get('base_quantization') or 'float'} weights of this checkpoint "
            f"(fingerprint {fp}; this model: {expected_fingerprint}); its deltas are applied unchanged as side-cars, "
            "so results differ from the original by the quantization error of the base", stacklevel=3)
    elif expected_fingerprint is not None and fp != expected_fingerprint:
        raise StackError(
            f"stack {path} was computed on base model {manifest.get('base_model')!r} (fingerprint {fp}) but this "
            f"model's fingerprint is {expected_fingerprint}; load it onto the same base model it was made with"
        )
    records, shards = list(manifest["edits"]), list(manifest.get("shards", ["edits.safetensors"]))
    if manifest.get("format_version") == JOURNAL_FORMAT:
        _read_journal(path, manifest["journal_id"], records, shards)
    by_edit: dict[int, dict[str, torch.Tensor]] = {}
    for shard in shards:
        if (path / shard).exists() or shard != "edits.safetensors":
            for key, t in load_file(str(path / shard)).items():
                i, name = key.split("/", 1)
                by_edit.setdefault(int(i), {})[name] = t
    edits = []
    for i, rec in enumerate(records):
        tensors = by_edit.get(i, {})
        entry = entry_from_saved(rec["kind"], rec.get("meta", {}), tensors)
        extra = path / f"entry-{i}"
        if extra.is_dir() and hasattr(entry, "load_extra"):
            entry.load_extra(extra)
        hparams = {k: v for k, v in rec.get("hparams", {}).items() if k not in RETIRED_HPARAMS}
        edits.append(Edit(rec["method"], [Fact.model_validate(f) for f in rec["facts"]], hparams,
                          entry, id=rec["id"], depends_on=rec.get("depends_on"), created=rec.get("created"),
                          info=rec.get("info"), edit_set=rec.get("edit_set")))
    return edits


def _read_journal(path: Path, journal_id: str, records: list[dict], shards: list[str]) -> None:
    """Add the committed journal lines' records and shards (lines of another journal id, left by an
    older editwrap's rewrite, are not this manifest's)."""
    for n, line in enumerate(lines(path / JOURNAL), 1):
        if line.get("journal_id") != journal_id:
            continue
        records.extend(line["edits"])
        if line.get("shard"):
            shards.append(line["shard"])
        if line.get("count") != len(records):
            raise StackError(f"{path / JOURNAL} line {n} ends the stack at {line.get('count')} edits but its lines add "
                             f"up to {len(records)}: the journal was changed by hand; restore it or drop the lines "
                             "after the last consistent one")
