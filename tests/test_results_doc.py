"""docs/RESULTS.md matches the committed result files (benchmarks/readme_results.py --check)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "RESULTS.md"


@pytest.fixture(scope="module")
def rr():
    return load_benchmark("readme_results")


@pytest.fixture(scope="module")
def generated(rr):
    return rr.bodies(ROOT)  # reads docs/results/ only, writes nothing


def test_results_doc_is_up_to_date(rr, generated):
    assert rr.stale(DOC.read_text(encoding="utf-8"), generated) == []


def test_every_section_has_a_table(generated):
    for name, body in generated.items():
        assert re.search(r"^\|---", body, flags=re.M), name


def test_check_command_passes_and_fails_on_an_edited_copy(rr, tmp_path, capsys):
    assert rr.main(["--check"]) == 0
    doc = DOC.read_text(encoding="utf-8")
    edited = doc.replace("| Edit Succ. | 22.93 | 53.93 |", "| Edit Succ. | 23.93 | 53.93 |", 1)
    assert edited != doc
    copy = tmp_path / "RESULTS.md"
    copy.write_text(edited, encoding="utf-8")
    assert rr.main(["--check", "--doc", str(copy)]) == 1
    assert "knowedit-paper" in capsys.readouterr().out
    assert copy.read_text(encoding="utf-8") == edited  # --check writes nothing


def test_regeneration_restores_sections_and_keeps_prose(rr, generated):
    doc = DOC.read_text(encoding="utf-8")
    prose = "\nA hand-written note between the sections.\n"
    edited = doc.replace("<!-- end:quant -->\n", "<!-- end:quant -->\n" + prose, 1)
    edited = re.sub(r"(<!-- begin:speed -->\n).*?(\n<!-- end:speed -->)", r"\1| stale |\2", edited, flags=re.S)
    assert rr.stale(edited, generated) == ["speed"]
    fixed = rr.render(edited, generated)
    assert rr.stale(fixed, generated) == []
    assert fixed == doc.replace("<!-- end:quant -->\n", "<!-- end:quant -->\n" + prose, 1)
    assert "<!-- begin:main-table -->" in fixed  # sections the script does not generate are left alone


def test_missing_markers_are_an_error(rr, generated):
    doc = DOC.read_text(encoding="utf-8").replace("<!-- end:lifelong -->", "")
    with pytest.raises(SystemExit, match="lifelong"):
        rr.stale(doc, generated)


def test_readme_headline_is_up_to_date(rr):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert rr.stale(readme, rr.bodies(ROOT, sections=rr.README_SECTIONS)) == []


def test_readme_results_table_is_the_results_page_headline(rr):
    """The README's one results table and RESULTS.md's headline are the same text."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    doc = DOC.read_text(encoding="utf-8")
    assert rr._pattern("headline").search(readme).group(1) == rr._pattern("headline").search(doc).group(1)
