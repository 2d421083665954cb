"""No tracked file carries an absolute path of the machine it was written on.

A path into a home folder, the workspace or a temp folder (``editwrap.paths.MACHINE_PATH``: right
under the file system's root ``home/<user>``, ``Users/<user>``, ``root``, ``work``, ``workspace``,
``tmp``, macOS's ``var/folders``; a Windows ``C:`` user folder) means nothing on a reader's machine:
result files name models and data instead, and docs use relative output folders. The path must
start a token, so URLs (``https://host/tmp/x``) and relative paths (``../tmp``, ``results/tmp``)
are not hits. Scanned: every file ``git ls-files`` lists (outside a git checkout: the tree, without
the folders .gitignore names), binary files skipped, except tests' own data fixtures, which are
copies of published files.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from editwrap.paths import MACHINE_PATH

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ("tests/data/", "tests/fixtures/")
_REST = re.compile(r"[^\s\"'`)\]>,;]*")  # the rest of a found path, for the message
# the folders .gitignore keeps out of the repository (for a tree that is not a git checkout)
UNTRACKED = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist", "results",
             "my-edits", "results-example", ".dev", "art"}


def tracked_files(root: Path = ROOT) -> list[str]:
    """Repository-relative paths of the tracked files (posix separators)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True)
        return [f for f in out.stdout.decode("utf-8").split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and not UNTRACKED.intersection(p.relative_to(root).parts[:-1])
                      and not p.name.endswith(".egg-info") and not any(q.endswith(".egg-info") for q in p.parts))


def machine_paths(text: str) -> list[tuple[int, str]]:
    """(line number, the whole path) of every machine path in ``text``."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(0) + _REST.match(text, m.end()).group(0))
            for m in MACHINE_PATH.finditer(text)]


def _text(path: Path) -> str | None:
    data = path.read_bytes()
    return None if b"\0" in data[:8192] else data.decode("utf-8", errors="replace")


def test_no_tracked_file_holds_a_machine_path():
    hits = []
    for rel in tracked_files():
        p = ROOT / rel
        if rel.startswith(FIXTURES) or not p.is_file():
            continue
        text = _text(p)
        hits += [f"{rel}:{line}: {found}" for line, found in machine_paths(text or "")]
    assert not hits, "absolute machine paths (use names or relative paths):\n" + "\n".join(hits)


def test_the_rule_finds_machine_paths_and_leaves_urls_and_relative_paths():
    # built from parts so that this file itself holds none
    home, tmp, work = "/" + "home/ana", "/" + "tmp", "/" + "work"
    found = [f"model at {home}/.cache/m", f'"data": "{work}/shared/x.json"', f"--out {tmp}/gen", f"HOME=/{'root'}",
             f"file://{home}/x", "C:" + "\\" + "Users" + "\\ana\\x", "/" + "private/var/folders/ab/T/x"]
    kept = [f"https://example.org{tmp}/x", f"../{tmp[1:]}/x", f"results{tmp}/x", f"docs/results{work}/x",
            "/v1/edits", f"{tmp}fs", "~/.cache/editwrap", "embedded:smollm2-135m"]
    assert [bool(machine_paths(s)) for s in found] == [True] * len(found)
    assert [machine_paths(s) for s in kept] == [[] for _ in kept]
    assert machine_paths(f"a\nb {tmp}/x, c\n") == [(2, f"{tmp}/x")]


def test_tracked_files_lists_the_repository(tmp_path):
    assert "tests/test_repo_hygiene.py" in tracked_files()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.md").write_text("x")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "g.py").write_text("x")
    assert tracked_files(tmp_path) == ["a/f.md"]  # not a git checkout: the tree, ignored folders left out
