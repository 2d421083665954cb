"""Paths as files meant for other people record them (run summaries, stack manifests, trained
editors' info, benchmark JSON).

Where something lay on the machine that wrote a file (a model in a home cache, a scratch folder)
tells a reader elsewhere nothing and shows that machine's layout. Such files record instead:

* the embedded model as the name ``EditableModel.from_pretrained`` accepts (``embedded:smollm2-135m``);
* a Hugging Face cache snapshot as its repository id (a model: ``org/name``; a dataset file:
  ``hf://datasets/org/name/path/in/repo``);
* a path inside ``base`` (the folder the file is written to) relative to that folder;
* any other absolute path as its final name.

Names (hub ids, ``knowedit:ZsRE``) and relative paths are kept as given. The content itself is
identified beside the name (model fingerprint, data hash), so comparisons lose nothing.
``MACHINE_PATH`` is the rule the repository's own files are checked against.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

__all__ = ["MACHINE_PATH", "is_machine_path", "portable_path", "portable"]

#: An absolute path into a home folder (``home/<user>``, ``Users/<user>``, ``root``), the workspace
#: (``work``, ``workspace``) or a temp folder (``tmp``, macOS's ``var/folders``), each right under the
#: file system's root, or a Windows user folder (``C:`` then ``Users``). It must start a token: a
#: letter, digit or one of ``_ . ~ -`` just before the slash means a URL or a relative path
#: (``https://host/tmp/x``, ``../tmp``, ``results/tmp``), which are not machine paths.
MACHINE_PATH = re.compile(r"(?<![\w.~-])(?:/(?:home|Users)/[\w.-]+|/(?:root|work|workspace|tmp)\b"
                          r"|/(?:private/)?var/folders/|[A-Za-z]:[\\/]+(?:Users|Documents and Settings)\b)")

_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")
_HUB_CACHE = re.compile(r"^(models|datasets)--(.+)$")


def is_machine_path(value: Any) -> bool:
    """An absolute path (or one from ``~``) that points into this machine's file system: its
    top-level folder exists here (so URL paths such as ``/v1/edits`` in a benchmark's output are
    not taken for one), or it is a Windows drive/UNC path."""
    if not isinstance(value, (str, os.PathLike)):
        return False
    s = os.fspath(value)
    if not s or "\n" in s or len(s) > 4096:
        return False
    if _WINDOWS_ABS.match(s):
        return True
    if s.startswith("~"):
        s = os.path.expanduser(s)
    p = Path(s)
    return p.is_absolute() and len(p.parts) > 1 and Path(p.anchor, p.parts[1]).exists()


def _embedded_name(p: PurePath) -> str | None:
    """``embedded:<key>`` for a converted embedded model's cache folder (``<dirname>-v<N>``)."""
    from .defaults import EMBEDDED_MODELS, EMBEDDED_PREFIX

    for key, (dirname, *_rest) in EMBEDDED_MODELS.items():
        if re.fullmatch(re.escape(dirname) + r"-v\d+", p.name):
            return EMBEDDED_PREFIX + key
    return None


def _hub_name(p: PurePath) -> str | None:
    """The repository a path in a Hugging Face cache belongs to
    (``…/models--org--name/snapshots/<revision>/…``)."""
    parts = p.parts
    for i, part in enumerate(parts):
        m = _HUB_CACHE.match(part)
        if m:
            repo = m.group(2).replace("--", "/")
            rest = parts[i + 3:] if len(parts) > i + 2 and parts[i + 1] == "snapshots" else ()
            return "/".join(("hf://datasets", repo, *rest) if m.group(1) == "datasets" else (repo, *rest))
    return None


def portable_path(path: str | os.PathLike | None, base: str | os.PathLike | None = None) -> str:
    """``path`` as a file meant for others records it (module doc); ``""`` for None. Give it
    values known to be paths (a model, a data file); :func:`portable` finds them in a tree."""
    if path is None:
        return ""
    s = os.fspath(path)
    if not (_WINDOWS_ABS.match(s) or s.startswith(("/", "~"))):
        return s
    p: PurePath = PureWindowsPath(s) if _WINDOWS_ABS.match(s) else Path(os.path.expanduser(s))
    named = _embedded_name(p) or _hub_name(p)
    if named:
        return named
    if base is not None and isinstance(p, Path):
        try:
            return p.resolve().relative_to(Path(base).resolve()).as_posix() or "."
        except ValueError:
            pass
    return p.name or s


def portable(obj: Any, base: str | os.PathLike | None = None) -> Any:
    """A copy of a JSON-like tree (dicts, lists, tuples) with every string that
    :func:`is_machine_path` accepts replaced by :func:`portable_path`; other values unchanged."""
    if isinstance(obj, dict):
        return {k: portable(v, base) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, base) for v in obj] if isinstance(obj, list) else tuple(portable(v, base) for v in obj)
    if isinstance(obj, (str, os.PathLike)) and is_machine_path(obj):
        return portable_path(obj, base)
    return obj
