"""How a run records its data and model: by name, or relative to the run folder; never by an
absolute machine path, so a results folder reads the same on every machine it is copied to."""
from __future__ import annotations

import os
from pathlib import Path

from editwrap.paths import portable_path

from editwrap.hub import COLLECTIONS, is_data_name, lookup, name_of_path

__all__ = ["data_label", "model_label", "model_name", "relative_to"]


def relative_to(path: str | os.PathLike, run_dir: str | Path) -> str:
    """``path`` relative to ``run_dir`` (POSIX separators); the file name alone across drives."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(run_dir).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).name


def data_label(data: str | os.PathLike, run_dir: str | Path) -> str:
    """The dataset name (also for a path inside ``$EDITWRAP_DATA_DIR`` or the Hugging Face cache),
    else the path relative to the run folder."""
    if is_data_name(data):
        text = str(data)
        return text.lower() if text.lower() in COLLECTIONS else lookup(text).name
    return name_of_path(data) or relative_to(data, run_dir)


def model_label(name_or_path: str, run_dir: str | Path) -> str:
    """``embedded:<name>`` for the packaged models (whose converted copy sits in a user cache), a
    hub id as it is, a local model folder relative to the run folder (:mod:`editwrap.paths`)."""
    return portable_path(name_or_path, run_dir) if name_or_path else name_or_path


def model_name(recorded: str | None) -> str:
    """A short model name for report labels; runs recorded with the embedded model's cache path
    and with ``embedded:<name>`` give the same one."""
    text = portable_path(str(recorded or ""))
    return text if text.startswith("embedded:") else Path(text).name
