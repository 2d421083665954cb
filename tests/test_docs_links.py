"""The documentation holds together: links resolve, every method has its page, pages name every
hyperparameter, and numbers quoted beside a link to the results page are the results page's.

Checked without a network or a model: README.md and every page under docs/ (links and images,
``#anchors`` against the target's headings as GitHub writes them), and every ``docs/<page>.md``
that code, scripts and docs mention (CHANGELOG.md is history and keeps old names).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from editwrap.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "RESULTS.md"
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
_MENTION = re.compile(r"(?<![\w/.-])docs/[\w./-]+\.md\b")
#: exact speed-up switches: the same result either way, so not part of a method's documented knobs
SWITCHES = {"v_prefix_cache", "v_replay_lower", "v_batch_facts", "fast_path"}


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks (a command is not a link)."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = heading.strip().replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file (duplicates get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*$", line)
        if not m:
            continue
        s = slug(m.group(1))
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """The relative links of one page whose file or anchor does not exist."""
    bad = []
    for target in _LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{path.relative_to(root)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.relative_to(root)}: {target} (no heading with that anchor)")
    return bad


def test_slug_matches_github():
    assert slug("Headline: ZsRE 50, teacher-forced and generated") == "headline-zsre-50-teacher-forced-and-generated"
    assert slug("Lifelong: 1,000 mixed edits") == "lifelong-1000-mixed-edits"
    assert slug("`editwrap analyze trace`") == "editwrap-analyze-trace"
    assert slug("8-bit beside fp32") == "8-bit-beside-fp32"
    assert slug("FT-L / FT-M (`ft-l`, `ft-m`)") == "ft-l--ft-m-ft-l-ft-m"


def test_checker_finds_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n[ok](a.md#top) [gone](b.md) [anchor](a.md#nope)\n```\n[code](x.md)\n```\n")
    assert broken_links(tmp_path / "a.md", root=tmp_path) == [
        "a.md: b.md (no such file)", "a.md: a.md#nope (no heading with that anchor)"]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_docs_pages_mentioned_in_code_exist():
    """``docs/<page>.md`` in code, scripts, tests and docs names a page that exists."""
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in ("editwrap", "evals", "integrations", "benchmarks", "examples", "tests", "docs", ".ci"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".sh", ".md", ".toml", "")
                  and p.is_file() and "results" not in p.relative_to(ROOT).parts[:2]]
    missing = {f"{p.relative_to(ROOT)}: {m}" for p in files
               for m in _MENTION.findall(p.read_text(encoding="utf-8", errors="replace"))
               if not (ROOT / m).exists()}
    assert sorted(missing) == []


def method_folders() -> dict[str, list[type]]:
    """Method folder name (editwrap/methods/<folder>/) -> the registered classes defined there."""
    out: dict[str, list[type]] = {}
    for cls in METHODS.values():
        out.setdefault(cls.__module__.split(".")[2], []).append(cls)
    return out


def test_every_method_has_a_page_listed_in_the_index():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for folder in method_folders():
        assert (DOCS / "methods" / f"{folder}.md").exists(), folder
        assert f"methods/{folder}.md" in index, folder
        assert f"docs/methods/{folder}.md" in readme, folder


@pytest.mark.parametrize("folder", sorted(method_folders()))
def test_method_page_names_every_hyperparameter(folder):
    """Each hyperparameter a user can set appears (in backticks) on its method's page or on a method
    page it links to (the value optimisation shared by ROME, MEMIT, AlphaEdit and PMET is on ROME's)."""
    page = DOCS / "methods" / f"{folder}.md"
    text = page.read_text(encoding="utf-8")
    for target in set(re.findall(r"\]\(([\w-]+\.md)(?:#[^)]*)?\)", text)):
        if (page.parent / target).exists():
            text += (page.parent / target).read_text(encoding="utf-8")
    fields = {f for cls in method_folders()[folder] for f in cls.Hparams.model_fields} - SWITCHES
    assert sorted(f for f in fields if f"`{f}`" not in text and f"`{f}=" not in text) == []


def test_numbers_beside_results_links_are_on_the_results_page():
    """A line of a method page that links to RESULTS.md quotes only numbers that page holds."""
    results = RESULTS.read_text(encoding="utf-8")
    bad = []
    for page in sorted((DOCS / "methods").glob("*.md")):
        for line in page.read_text(encoding="utf-8").splitlines():
            if "RESULTS.md#" in line:
                bad += [f"{page.name}: {n}" for n in re.findall(r"(?<![\w.])\d+\.\d\d(?!\d)", line)
                        if n not in results]
    assert bad == []


def test_readme_is_short_and_has_no_machine_talk():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert not re.search(r"shared with|other jobs|load average", text)
