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
from .paths import portable_path

if TYPE_CHECKING:
    from .model import EditableModel

__all__ = ["Edit", "EditStack", "StackError", "load_stack_dir", "FORMAT_VERSION"]

FORMAT_VERSION = 1
#: a stack saved in several safetensors shards (``save_stack_dir(..., append=True)``)
SHARDED_FORMAT = 2


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
    ``edits`` (same ids), write only the new edits, to one more safetensors shard, and commit them
    by replacing ``edits.json`` (a long sequential run then saves in time proportional to what is
    new, not to the whole stack). Otherwise, and always without ``append``, the whole stack is
    rewritten as one file."""
    path = Path(path)
    header = {"format_version": FORMAT_VERSION, "editwrap_version": __version__,
              "base_fingerprint": host.fingerprint(), "base_model": portable_path(host.name_or_path),
              "base_checkpoint": checkpoint_probe(host), "base_quantization": quantization_label(host)}
    if append and _append(edits, path, header):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        tensors, records = _write_entries(edits, 0, tmp)
        (tmp / "edits.json").write_text(json.dumps({**header, "edits": records}, indent=2), encoding="utf-8")
        save_file(tensors, str(tmp / "edits.safetensors"))
        _keep_foreign(path, tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:6]}")
            os.replace(path, old)
        os.replace(tmp, path)
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
                                or f.name.startswith(".edits.json.tmp-")):
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)


def _append(edits: Sequence[Edit], path: Path, header: dict[str, Any]) -> bool:
    """The ``append`` case of :func:`save_stack_dir`; False when it does not apply."""
    mf = path / "edits.json"
    try:
        old = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    k = len(old.get("edits", []))
    if (old.get("format_version", 0) > SHARDED_FORMAT or old.get("base_fingerprint") != header["base_fingerprint"]
            or k == 0 or k > len(edits) or [r.get("id") for r in old["edits"]] != [e.id for e in edits[:k]]):
        return False
    shards = list(old.get("shards", ["edits.safetensors"]))
    tensors, records = _write_entries(edits[k:], k, path)
    if tensors:
        shard = f"edits-{k:06d}-{uuid.uuid4().hex[:6]}.safetensors"
        save_file(tensors, str(path / shard))
        shards.append(shard)
    manifest = {**header, "format_version": SHARDED_FORMAT if len(shards) > 1 else FORMAT_VERSION,
                "shards": shards, "edits": [*old["edits"], *records]}
    tmp = path / f".edits.json.tmp-{uuid.uuid4().hex[:6]}"
    try:
        # compact: json's C encoder (indent uses the pure-Python one, ~4x slower on a 10,000-edit manifest)
        tmp.write_text(json.dumps(manifest, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, mf)  # the commit point: before it, the new shard is an orphan the old manifest ignores
    finally:
        tmp.unlink(missing_ok=True)
    for f in path.glob("edits-*.safetensors"):
        if f.name not in shards:
            f.unlink(missing_ok=True)
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
    if manifest.get("format_version", 0) > SHARDED_FORMAT:
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
    flat: dict[str, torch.Tensor] = {}
    for shard in manifest.get("shards", ["edits.safetensors"]):
        if (path / shard).exists() or shard != "edits.safetensors":
            flat.update(load_file(str(path / shard)))
    edits = []
    for i, rec in enumerate(manifest["edits"]):
        prefix = f"{i}/"
        tensors = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
        entry = entry_from_saved(rec["kind"], rec.get("meta", {}), tensors)
        extra = path / f"entry-{i}"
        if extra.is_dir() and hasattr(entry, "load_extra"):
            entry.load_extra(extra)
        hparams = {k: v for k, v in rec.get("hparams", {}).items() if k not in RETIRED_HPARAMS}
        edits.append(Edit(rec["method"], [Fact.model_validate(f) for f in rec["facts"]], hparams,
                          entry, id=rec["id"], depends_on=rec.get("depends_on"), created=rec.get("created"),
                          info=rec.get("info"), edit_set=rec.get("edit_set")))
    return edits
