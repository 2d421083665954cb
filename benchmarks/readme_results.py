"""Regenerate the result tables of docs/RESULTS.md from the committed result files.

Every table of docs/RESULTS.md that comes from a run sits between ``<!-- begin:NAME -->`` and
``<!-- end:NAME -->`` markers; this script computes each of them from the per-record JSONL and
summaries under ``docs/results/`` (with the table functions of ``editwrap report``) and writes them
between their markers, so the document never drifts from the files it cites. Hand-written prose
and tables outside the markers, and marked sections this script does not know, are left alone.

    python benchmarks/readme_results.py            # rewrite docs/RESULTS.md (and its curve PNGs)
    python benchmarks/readme_results.py --check    # write nothing; exit 1 if docs/RESULTS.md is out of date

It reads committed folders only, so it gives the same document on a fresh clone; tests/test_results_doc.py
runs the check.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

from editwrap.evals.metrics import summarize
from editwrap.evals.reference import reference, reference_method
from editwrap.evals.errors import error_section
from editwrap.evals.report import NAMES as DATASETS
from editwrap.evals.report import (GEN, _curve_tables, _fmt, _labels, load_summaries, paper_comparison_table,
                                   paper_rows, plot_sequential, run_table)
from editwrap.evals.resultlog import read_result_lines
from editwrap.methods.base import METHODS, ordered_methods

ROOT = Path(__file__).resolve().parents[1]
DOC = "docs/RESULTS.md"
RES = "docs/results"
METRICS = ("Edit Succ.", "Rephrase", "Portability", "Locality")


def _name(key: str) -> str:
    """How tables write a method (its ``display_name``) or a dataset."""
    cls = METHODS.get(key)
    return cls.display_name if cls is not None else DATASETS.get(key, key)


def _order(method: str) -> int:
    """A method's position in tables (by family, then rank; the registry's order)."""
    names = [c.name for c in ordered_methods()]
    return names.index(method) if method in names else len(names)


def _runs(root: Path, *folders: str, mode: str | None = None, dataset: str | None = None) -> list[dict]:
    """Runs (finished or partial) under ``docs/results/<folder>``, in a stable order."""
    runs = load_summaries([root / RES / f for f in folders])
    runs = [r for r in runs
            if (mode is None or r.get("mode") == mode) and (dataset is None or r.get("dataset") == dataset)]
    return sorted(runs, key=lambda r: (r["method"], r.get("_file", "")))


def _relabel(text: str, names: dict[str, str]) -> str:
    """Column labels in plain words: folder tags -> hardware, partial runs -> records done of requested."""
    for old, new in names.items():
        text = text.replace(old, new)
    text = re.sub(r" \[in progress: (\d+)/(\d+)\]", r" (\1 of \2)", text).replace(") (", ", ")
    return text.replace(" (last resume)", " †")  # † = the last process of a resumed run (see the document)


def _sequential(root: Path, folders: tuple[str, ...], dataset: str, png: str, names: dict[str, str],
                plots: bool, also: list[tuple[str, str]] = ()) -> str:
    """A sequential run table, its curve tables and the plot (written only when ``plots``);
    ``also``: (folder, method) runs added from other folders."""
    runs = _runs(root, *folders, mode="sequential", dataset=dataset)
    for folder, method in also:
        runs += [r for r in _runs(root, folder, mode="sequential", dataset=dataset) if r["method"] == method]
    runs.sort(key=lambda r: (r["method"], r.get("_file", "")))
    if plots:
        plot_sequential(runs, root / RES / png, f"{DATASETS.get(dataset, dataset)}: sequential editing")
    body = run_table(runs) + "\n\n" + _curve_tables(runs).rstrip("\n")
    return _relabel(body, names) + f"\n\n![{dataset} sequential](results/{png})"


def knowedit_paper(root: Path, plots: bool) -> str:
    body = paper_comparison_table(_runs(root, "knowedit", "gpu/knowedit", mode="single"))
    body = body.split("\n\n", 2)[2]  # drop the report's own heading and note: the document has them
    return re.sub(r"^#### ", "### ", body, flags=re.M)


def mixed_sequential(root: Path, plots: bool) -> str:
    return _sequential(root, ("knowedit",), "mixed", "report/sequential-mixed.png", {}, plots)


def lifelong(root: Path, plots: bool) -> str:
    """The lifelong runs, plus the earlier 100-edit mixed runs (knowedit/) of methods that have no
    default-setting run in lifelong/ itself (ROME: only its ``ngd`` run is in a subfolder)."""
    have = {r["method"] for r in _runs(root, "lifelong", mode="sequential", dataset="mixed")
            if Path(r.get("_file", "")).parent.name == "lifelong"}
    extra = {r["method"] for r in _runs(root, "knowedit", mode="sequential", dataset="mixed")} - have
    return _sequential(root, ("lifelong",), "mixed", "lifelong/report/sequential-mixed.png",
                       {" [lifelong]": "", " [normcap]": ", max_delta_norm=0.3", " [fast]": ", v_lr=2.0, 16 steps",
                        " [ngd]": ", v_optimizer=ngd, 12 steps, two threads",
                        " [memoir_threshold]": ", threshold=0.7688",
                        " [generated]": ", with generated answers", " [knowedit]": ""}, plots,
                       also=[("knowedit", m) for m in sorted(extra)])


def adapters_single(root: Path, plots: bool) -> str:
    return _relabel(run_table(_runs(root, "adapters", mode="single", dataset="zsre")), {})


def adapters_sequential(root: Path, plots: bool) -> str:
    names = {" [results/adapters_new_defaults]": " (CPU, default loc_corpus)", " [results/adapters]": " (CPU)",
             " [gpu/adapters]": " (H200)"}
    return _sequential(root, ("adapters", "adapters_new_defaults", "gpu/adapters"), "zsre",
                       "report_adapters/sequential-zsre.png", names, plots)


def trained_editors(root: Path, plots: bool) -> str:
    """IKE, SERAC and MEND in and across domains, beside the paper's in-domain Llama-2-7b-chat numbers."""
    runs = sorted(_runs(root, "trained_editors", mode="single"),
                  key=lambda r: (_order(r["method"]), r.get("trained_on") != "zsre",
                                 r["dataset"] != r.get("trained_on"), r["dataset"]))
    paper_head = "paper, Llama-2-7b-chat (Edit / Port. / Loc.)"
    lines = ["| method | trained on ⇒ evaluated on | " + " | ".join(METRICS) + f" | n | {paper_head} |",
             "|---|---|" + "---:|" * (len(METRICS) + 1) + "---|"]
    for r in runs:
        rows, ds, src = paper_rows(r), r["dataset"], r.get("trained_on")
        name = _name(r["method"]) + (f" (k={r['hparams']['k']})" if r.get("hparams", {}).get("k") else "")
        ref_method = reference_method(r["method"])
        ref = [reference(ds, m, ref_method) for m in ("Edit Succ.", "Portability", "Locality")]
        paper = ""
        if (src is None or src == ds) and all(v is not None for v in ref):
            label = f"{_name(ref_method)}: " if ref_method != r["method"] else ""
            paper = label + " / ".join(f"{v:.2f}" for v in ref)
        lines.append(f"| {name} | {_name(src) if src else '–'} ⇒ {_name(ds)} | "
                     + " | ".join(_fmt(rows[m]) for m in METRICS) + f" | {r.get('n', '–')} | {paper} |")
    return "\n".join(lines)


def quant(root: Path, plots: bool) -> str:
    """int8 runs beside fp32 on the records both have (fp32: gpu/quant/fp32, else the KnowEdit ZsRE run)."""
    int8 = {r["method"]: r for r in _runs(root, "gpu/quant/int8", mode="single", dataset="zsre")}
    lines = ["| method | records | " + " | ".join(f"{m} fp32 → int8" if m == "Edit Succ." else m for m in METRICS)
             + " | pops bit-exact (int8) | CUDA peak MB fp32 → int8 |", "|---|---:|" + "---|" * (len(METRICS) + 2)]
    for method in sorted(int8, key=lambda m: (_order(m), m)):
        stem = f"zsre-{method}-single"
        fp32_dir = next(d for d in (root / RES / "gpu/quant/fp32", root / RES / "gpu/knowedit", None)
                        if d is None or (d / f"{stem}.jsonl").exists())
        if fp32_dir is None:
            continue
        lo = read_result_lines(root / RES / "gpu/quant/int8" / f"{stem}.jsonl", ("index",))[0]
        hi = read_result_lines(fp32_dir / f"{stem}.jsonl", ("index",))[0]
        idx = sorted(set(lo) & set(hi))
        a, b = (paper_rows({"dataset": "zsre"}, summarize([d[i] for i in idx])) for d in (hi, lo))
        exact = sum(bool(lo[i].get("pop_exact")) for i in idx)
        peaks = []
        for d in (fp32_dir, root / RES / "gpu/quant/int8"):
            p = d / f"{stem}.summary.json"
            mb = json.loads(p.read_text()).get("peak_memory_mb", {}) if p.exists() else {}
            peaks.append(mb.get("cuda_peak_allocated_mb") if p.exists() else None)
        peak = " → ".join(f"{v:.0f}" for v in peaks) if all(v is not None for v in peaks) else "–"
        lines.append(f"| {_name(method)} | {len(idx)} | "
                     + " | ".join(f"{_fmt(a[m])} → {_fmt(b[m])}" for m in METRICS)
                     + f" | {exact}/{len(idx)} | {peak} |")
    return "\n".join(lines)


def speed(root: Path, plots: bool) -> str:
    """Per-phase CPU seconds of one edit (``benchmarks/edit_speed.py --profile``)."""
    phases = ("covariance", "keys", "value optimisation", "solve", "other (method)", "scoring")
    rows = json.loads((root / RES / "speed/profile.json").read_text())
    head = " | ".join(p.replace(" (method)", "") for p in phases)
    lines = ["| edit | facts | " + head + " | CPU-s / fact | Edit Succ. |",
             "|---|---:|" + "---:|" * (len(phases) + 2)]
    for r in rows:
        method, _, batch = r["spec"].partition(":")
        name = _name(method) + (f", batch of {batch}" if batch else "")
        cells = [f"{r['phases'][p]['cpu_s']:.2f}" if p in r["phases"] else "–" for p in phases]
        lines.append(f"| {name} | {r['facts']} | " + " | ".join(cells)
                     + f" | {r['cpu_s_per_fact']:.2f} | {100 * r['edit_succ']:.1f} |")
    return "\n".join(lines)


def main_table(root: Path, plots: bool) -> str:
    """The headline: every method on ZsRE (then WikiData_recent / counterfact), single edits,
    EasyEdit's teacher-forced rows above the generated-answer rows, then why generated answers fail
    (counts; the histogram PNG is written next to the runs when ``plots``)."""
    parts = []
    for ds in ("zsre", "recent", "counterfact"):
        runs = _runs(root, "main", mode="single", dataset=ds)
        if runs:
            n = max(r.get("n") or 0 for r in runs)
            parts.append(f"**{DATASETS.get(ds, ds)}**, first {n} records\n\n" + run_table(runs))
    runs = _runs(root, "main", mode="single")
    if runs:
        errors = error_section(runs, root / RES / "main", _labels(runs), plot=plots)
        parts.append("**Why generated answers fail** (rewrite prompts)\n\n"
                     + errors.replace("](errors-", "](results/main/errors-"))
    return _relabel("\n\n".join(parts), {}) if parts else "(no runs under docs/results/main yet)"


def headline(root: Path, plots: bool) -> str:
    """README's headline: one row per method on ZsRE 50, teacher-forced beside generated."""
    runs = sorted(_runs(root, "main", mode="single", dataset="zsre"),
                  key=lambda r: _order(r["method"]))
    cols = ("Edit Succ.", "Rephrase", "Locality")
    lines = ["| method | " + " | ".join(f"{c} TF / gen." for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in runs:
        rows = paper_rows(r)
        lines.append(f"| {_name(r['method'])} | "
                     + " | ".join(f"{_fmt(rows[c])} / {_fmt(rows[c + GEN])}" for c in cols) + " |")
    return "\n".join(lines)


README_SECTIONS: dict[str, Callable[[Path, bool], str]] = {"headline": headline}

# marker name -> section builder(root, plots) -> markdown body
SECTIONS: dict[str, Callable[[Path, bool], str]] = {
    "headline": headline,  # the README's results table, the same text on both pages
    "main-table": main_table,
    "knowedit-paper": knowedit_paper,
    "mixed-sequential": mixed_sequential,
    "lifelong": lifelong,
    "adapters-single": adapters_single,
    "adapters-sequential": adapters_sequential,
    "trained-editors": trained_editors,
    "quant": quant,
    "speed": speed,
}


def bodies(root: Path = ROOT, plots: bool = False, sections: dict | None = None) -> dict[str, str]:
    """Every generated section's body; ``plots`` also writes the sequential-curve PNGs."""
    return {name: build(root, plots).strip("\n") for name, build in (sections or SECTIONS).items()}


def _pattern(name: str) -> re.Pattern:
    """A marked section; group 1 is its text (empty for ``begin``, newline, ``end``)."""
    return re.compile(rf"<!-- begin:{re.escape(name)} -->\n(.*?)\n?<!-- end:{re.escape(name)} -->", re.S)


def render(doc: str, new: dict[str, str]) -> str:
    """``doc`` with each named section's text between its markers replaced."""
    for name, body in new.items():
        marked = f"<!-- begin:{name} -->\n{body}\n<!-- end:{name} -->"
        doc, found = _pattern(name).subn(lambda m: marked, doc)
        if found != 1:
            raise SystemExit(f"the document needs exactly one <!-- begin:{name} --> / <!-- end:{name} --> pair (found "
                             f"{found})")
    return doc


def stale(doc: str, new: dict[str, str]) -> list[str]:
    """Names of the sections whose text in ``doc`` differs from the generated one."""
    render(doc, new)  # missing markers fail here
    return [name for name, body in new.items() if _pattern(name).search(doc).group(1) != body]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a document is out of date")
    ap.add_argument("--doc", default=None, help=f"only this document (default: {DOC} and README.md)")
    args = ap.parse_args(argv)
    docs = {str(ROOT / DOC): SECTIONS, str(ROOT / "README.md"): README_SECTIONS}
    if args.doc is not None:
        docs = {args.doc: README_SECTIONS if Path(args.doc).name == "README.md" else SECTIONS}
    bad = 0
    for doc_path, sections in docs.items():
        path = Path(doc_path)
        doc = path.read_text(encoding="utf-8")
        new = bodies(ROOT, plots=not args.check, sections=sections)
        if args.check:
            out = stale(doc, new)
            print(f"{path.name} is out of date: {', '.join(out)} (run python benchmarks/readme_results.py)"
                  if out else f"{path.name} is up to date")
            bad += bool(out)
            continue
        text = render(doc, new)
        path.write_text(text, encoding="utf-8")
        print(f"{path.name} updated" if text != doc else f"{path.name} already up to date")
    return int(bool(bad))


if __name__ == "__main__":
    sys.exit(main())
