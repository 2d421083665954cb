"""Writing an analysis's JSON: indented for reading, but lists of numbers on one line (a grid of
10×30 values is 10 lines, not 300), so the files stay small enough to commit beside the docs."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

__all__ = ["dumps", "write_json", "write_png"]

_NUM = r"(?:-?[0-9][0-9.eE+-]*|null|true|false)"
# JSON strings cannot hold a raw newline, so this only ever matches lists that json.dumps laid out
_LIST = re.compile(r"\[\n\s*(" + _NUM + r"(?:,\n\s*" + _NUM + r")*)\n\s*\]")


def dumps(obj: Any) -> str:
    return _LIST.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", json.dumps(obj, indent=1))


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as JSON, this machine's paths in it made portable (:mod:`editwrap.paths`)."""
    from ..paths import portable

    path = Path(path)
    path.write_text(dumps(portable(obj, path.parent)) + "\n", encoding="utf-8")
    return path


def write_png(plot: Callable[[Any, Path], Any], result: Any, path: str | Path) -> bool:
    """``plot(result, path)``; without matplotlib (an optional dependency) say so instead of failing
    after the JSON is already written."""
    try:
        plot(result, Path(path))
    except ModuleNotFoundError as e:
        if e.name != "matplotlib":
            raise
        print(f"no {Path(path).name}: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return False
    return True
