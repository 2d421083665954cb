"""Regenerate the result tables of README.md from the run folders.

The README's KnowEdit, mixed-sequential and adapter-sequential tables are sections of the reports
that ``editwrap report`` writes; this script builds the reports into ``docs/results/`` and copies each
section between its ``<!-- begin:NAME -->`` / ``<!-- end:NAME -->`` markers in the README, so the
README never drifts from the per-record JSONL it cites.  Hand-written prose around the markers is
left alone.

    python benchmarks/readme_results.py            # rewrite README.md in place
    python benchmarks/readme_results.py --check    # exit 1 if README.md is out of date
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from editwrap.evals.report import build_report

ROOT = Path(__file__).resolve().parents[1]

# report folder -> (result folders, build_report keywords, {marker: section heading prefix})
REPORTS: dict[str, tuple[list[str], dict, dict[str, str]]] = {
    "docs/results/report": (
        ["results/knowedit", "results/gpu/knowedit"],
        {"paper": True, "title": "KnowEdit on SmolLM2-135M-Instruct"},
        {"knowedit-paper": "## Ours beside", "mixed-sequential": "## Mixed"},
    ),
    "docs/results/report_adapters": (
        ["results/adapters", "results/gpu/adapters"],
        {"title": "Adapters and activation entries on SmolLM2-135M-Instruct"},
        {"adapters-sequential": "## ZsRE — sequential"},
    ),
}


def section(report: str, heading: str, folder: str) -> str:
    """Body of the ``## `` section whose heading starts with ``heading``, README-ready."""
    lines = report.splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith(heading)), None)
    if start is None:
        raise SystemExit(f"section {heading!r} not found in {folder}/report.md: was the run made?")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    body = "\n".join(lines[start + 1:end]).strip("\n")
    body = re.sub(r"^#### (.+)$", r"**\1**", body, flags=re.M)  # README nests them under ###
    return re.sub(r"\]\((?!https?:|/)([^)]+\.png)\)", rf"]({folder}/\1)", body)


def splice(readme: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- begin:{name} -->\n).*?(\n<!-- end:{name} -->)", re.S)
    new, found = pattern.subn(lambda m: m.group(1) + body + m.group(2), readme)
    if not found:
        raise SystemExit(f"README.md has no <!-- begin:{name} --> / <!-- end:{name} --> markers")
    return new


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if out of date")
    args = ap.parse_args(argv)
    readme_path = ROOT / "README.md"
    readme = old = readme_path.read_text()
    for folder, (results, kw, sections) in REPORTS.items():
        missing = [r for r in results if not (ROOT / r).is_dir()]
        if missing:
            raise SystemExit(f"no such results folder: {', '.join(missing)} (run the benchmarks first)")
        report = build_report([ROOT / r for r in results], ROOT / folder, **kw)
        for name, heading in sections.items():
            readme = splice(readme, name, section(report, heading, folder))
    if args.check:
        print("README.md is up to date" if readme == old else "README.md is out of date")
        return int(readme != old)
    readme_path.write_text(readme)
    print("README.md updated" if readme != old else "README.md already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
