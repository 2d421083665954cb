"""Summaries -> markdown tables shaped like the KnowEdit paper's (rows = metrics, columns = methods,
one table per dataset and mode) and PNG curves for sequential runs (metric vs number of edits, one
line per method). ``build_report(folders, out)`` merges every ``*.summary.json`` under the folders
and appends lm-eval regressions (``lm_eval-*.json``) as a "General ability" table.

Generated-answer metrics (the summary's ``generation`` block, :mod:`editwrap.evals.generation`) are
rows ``<metric> (generated)`` under the EasyEdit rows and dashed lines beside them in the curves;
a run without that block (older results, ConvSent/Sanitation) shows – there.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import error_section
from .provenance import model_name
from .scale import cost_table
from .summaries import _json_files, load_summaries, partial_summary

__all__ = ["paper_rows", "run_table", "case_tables", "write_run", "build_report", "load_summaries", "partial_summary",
           "plot_sequential",
           "general_ability_table", "cross_domain_table", "paper_comparison_table"]

NAMES = {"zsre": "ZsRE", "recent": "WikiData_recent", "counterfact": "WikiData_counterfact", "wikibio": "WikiBio",
         "convsent": "ConvSent", "sanitation": "Sanitation", "mixed": "Mixed (ZsRE + recent + counterfact)"}
ROWS = ("Edit Succ.", "Rephrase", "Portability", "Locality", "Fluency")
CURVES = ("Edit Succ.", "Portability", "Locality")
GEN = " (generated)"
GEN_ROWS = tuple(r + GEN for r in ("Edit Succ.", "Edit Succ. F1", "Rephrase", "Rephrase F1", "Portability",
                                   "Portability F1", "Locality"))


def _pool_key(run: dict[str, Any]) -> str:
    """The dataset, or for a mixed pool listed file by file, ``mixed:`` and the files' stems."""
    data = str(run.get("data") or "")
    if run.get("dataset") != "mixed" or "," not in data:
        return run["dataset"]
    return "mixed:" + "+".join(Path(p.split("=")[-1]).stem or p for p in data.split(","))


def pool_name(run: dict[str, Any]) -> str:
    """A table title's dataset name: ``Mixed (counterfact_easyedit + ZsRE)`` for a listed pool."""
    key = _pool_key(run)
    return f"Mixed ({key.removeprefix('mixed:').replace('+', ' + ')})" if key.startswith("mixed:") else \
        NAMES.get(key, key)


def paper_rows(summary: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict[str, float | None]:
    """The paper's rows for one run (x100 like the paper). ConvSent: Edit Succ. = es x 100 and
    Locality = dd (KL to the unedited model, lower is better); Sanitation: Edit Succ. = success x 100."""
    m = metrics if metrics is not None else summary.get("metrics", {})
    rows = {r: m.get(r) for r in ROWS}
    gen = m.get("generation") or {}
    rows.update({r: gen.get(r.removesuffix(GEN)) for r in GEN_ROWS})
    if summary.get("dataset") == "convsent":
        rows["Edit Succ."] = None if m.get("es") is None else 100 * m["es"]
        rows["Locality"] = m.get("dd")
    elif summary.get("dataset") == "sanitation":
        rows["Edit Succ."] = None if m.get("success") is None else 100 * m["success"]
    return rows


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.2f}" if isinstance(v, (int, float)) else str(v)


def _labels(runs: Sequence[dict]) -> list[str]:
    """Column names: the method, plus the model / folder where needed to tell columns apart."""
    labels = [r["method"] + (f" ({r['trained_on']} ⇒)" if r.get("trained_on") else "")
              + (f" ×{r['batch_size']}/edit" if r.get("mode") == "sequential" and (r.get("batch_size") or 1) > 1
                 else "")
              + (f" +consolidate/{r['consolidate_every']}" if r.get("consolidate_every") else "")
              + (" [memit protocol]" if r.get("protocol") == "memit" else "") for r in runs]
    if len({model_name(r.get("model")) for r in runs}) > 1:  # the same model at other paths is one
        labels = [f"{lab} ({model_name(r.get('model')) or 'model'})" for lab, r in zip(labels, runs)]
    if len(set(labels)) < len(labels):  # the same method from two folders: name the folders
        folders = [Path(r.get("_file", "")).parent for r in runs]
        depth = 2 if len({f.name for f in folders}) < len(set(folders)) else 1
        labels = [f"{lab} [{'/'.join(f.parts[-depth:])}]" for lab, f in zip(labels, folders)]
    return [lab + (f" [in progress: {r['n']}/{r['n_requested']}]" if r.get("in_progress") else "")
            for lab, r in zip(labels, runs)]


def run_table(runs: Sequence[dict], title: str | None = None) -> str:
    """One markdown table: rows = metrics present in any run, columns = runs (methods)."""
    labels = _labels(runs)
    cols = [paper_rows(r) for r in runs]
    convsent = any(r.get("dataset") == "convsent" for r in runs)
    lines = [f"#### {title}", ""] if title else []
    lines += ["| metric | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for row in ROWS + GEN_ROWS:
        if any(c[row] is not None for c in cols):
            name = "Locality (KL, lower better)" if row == "Locality" and convsent else row
            lines.append(f"| {name} | " + " | ".join(_fmt(c[row]) for c in cols) + " |")
    lines.append("| n records | " + " | ".join(str(r.get("n", "–")) for r in runs) + " |")
    if any(r.get("score_sample") for r in runs):
        lines.append("| scored (seeded sample) | " + " | ".join(
            str((r.get("metrics") or {}).get("n", "–")) if r.get("score_sample") else "all" for r in runs) + " |")
    lines.append("| wall time (s) | " + " | ".join(_wall(r) for r in runs) + " |")
    if any(r.get("device") for r in runs):  # timings only compare on the same card
        lines.append("| device | " + " | ".join(str(r.get("device") or "–") for r in runs) + " |")
    if any(r.get("bit_exact") is not None for r in runs):
        lines.append("| bit-exact after pop | " + " | ".join(str(r.get("bit_exact", "–")) for r in runs) + " |")
    return "\n".join(lines)


def _wall(run: dict) -> str:
    """Wall time of the process that finished the run; a resumed run says so (earlier processes' time
    is not in it)."""
    cell = _fmt(run.get("wall_seconds"))
    n, computed = run.get("metrics", {}).get("n"), run.get("edits_computed")
    older = run.get("mode") == "single" and computed is not None and n is not None and computed < n  # pre-resumed_lines
    resumed = run.get("resumed_lines") or run.get("restored") or run.get("replayed") or older
    return f"{cell} (last resume)" if resumed else cell


def _breakdown(summary: dict) -> str:
    m = summary.get("metrics", {})
    rows = [(sec + g, k, v) for g, mm in (("", m), (GEN, m.get("generation") or {}))
            for sec in ("Portability", "Locality") for k, v in (mm.get(f"{sec} by key") or {}).items()]
    if not rows:
        return ""
    return "\n".join(["| section | key | score |", "|---|---|---:|",
                      *(f"| {s} | {k} | {_fmt(v)} |" for s, k, v in rows)])


def _curve_tables(runs: Sequence[dict]) -> str:
    """Per metric: rows = number of edits, columns = methods."""
    labels, out = _labels(runs), []
    cps = sorted({int(c) for r in runs for c in (r.get("checkpoints") or {})})
    for metric in CURVES + tuple(c + GEN for c in CURVES):
        vals = [{int(c): paper_rows(r, s)[metric] for c, s in (r.get("checkpoints") or {}).items()} for r in runs]
        if not any(v is not None for d in vals for v in d.values()):
            continue
        out += [f"{metric} vs number of edits:", "", "| edits | " + " | ".join(labels) + " |",
                "|---:|" + "---:|" * len(labels)]
        out += [f"| {c} | " + " | ".join(_fmt(d.get(c)) for d in vals) + " |" for c in cps]
        out.append("")
    return "\n".join(out)


def plot_sequential(runs: Sequence[dict], path: str | Path, title: str = "") -> Path | None:
    """PNG: one panel per metric (Edit Succ., Portability, Locality), x = number of edits; the
    generated-answer variant of a metric is a dashed line in the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = _labels(runs)
    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")  # one distinct colour per run
    palette = lambda k: cmap(k % cmap.N)  # noqa: E731
    panels = []
    for metric in CURVES:
        lines = []
        for k, (lab, r) in enumerate(zip(labels, runs)):
            for variant, style in ((metric, "-"), (metric + GEN, "--")):
                pts = sorted((int(c), paper_rows(r, s)[variant]) for c, s in (r.get("checkpoints") or {}).items())
                pts = [(x, y) for x, y in pts if y is not None]
                if pts:
                    lines.append((lab + (" (generated)" if style == "--" else ""), pts, style, palette(k)))
        if lines:
            panels.append((metric, lines))
    if not panels:
        return None
    names = list(dict.fromkeys(lab for _, lines in panels for lab, *_ in lines))
    ncol = 1 if len(names) <= 4 else 2 if len(names) <= 12 else 3
    legend_h = 0.22 * -(-len(names) // ncol) + 0.2  # inches below the panels
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4 + legend_h), squeeze=False)
    for ax, (metric, lines) in zip(axes[0], panels):
        for lab, pts, style, color in lines:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, marker="o", label=lab)
        xs = [p[0] for _, pts, _, _ in lines for p in pts]
        if min(xs) > 0 and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
        ax.set_xlabel("number of edits")
        ax.set_ylabel(metric)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.set_title(metric)
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_h / (3.4 + legend_h), 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_run(summary: dict, out: str | Path, stem: str) -> None:
    """``<stem>.summary.json``, ``<stem>.md`` (table, per-key breakdown, curves) and, for
    sequential runs, ``<stem>.png``."""
    out = Path(out)
    (out / f"{stem}.summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    name = pool_name(summary)
    title = f"{name} — {summary['mode']} ({model_name(summary.get('model')) or 'model'})"
    parts = [run_table([summary], title), "", _breakdown(summary)]
    if summary.get("fluency") == "easyedit" and (summary.get("metrics") or {}).get("Fluency") is not None:
        parts += ["", f"Fluency: EasyEdit mode (top-5 sampling to 100 tokens including the prompt, seed "
                      f"{summary.get('seed', 0)}), comparable with EasyEdit's tables."]
    if (summary.get("metrics") or {}).get("memit"):
        from .counterfact import memit_table

        parts += ["", memit_table(summary)]
    if summary.get("checkpoints"):
        parts += ["", _curve_tables([summary])]
        cost = cost_table(summary)
        parts += ["Cost vs number of edits:", "", cost, ""] if cost else []
        plot_sequential([summary], out / f"{stem}.png", title)
    (out / f"{stem}.md").write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")


def general_ability_table(folders: Iterable[str | Path]) -> str:
    """lm-eval regressions: ``lm_eval-*.json`` as ``{task: {metric: {before, after, delta, stderr}}}``
    (or the ``editwrap lm-eval --out`` form ``{"runs": [{"method", "tasks": {...}}]}``)."""
    rows = []
    for p, data in _json_files(folders, "lm_eval-*.json"):
        runs = data.get("runs") if isinstance(data, dict) and "runs" in data else [{"tasks": data}]
        for run in runs or []:
            who = run.get("method") or p.stem.removeprefix("lm_eval-")
            for task, metrics in (run.get("tasks") or {}).items():
                for metric, v in (metrics.items() if isinstance(metrics, dict) else []):
                    if isinstance(v, dict) and "before" in v:
                        se = v.get("stderr", v.get("stderr_delta"))
                        rows.append(f"| {who} | {task} | {metric} | {_fmt(v.get('before'))} | {_fmt(v.get('after'))} "
                                    f"| {_fmt(v.get('delta'))} | {_fmt(se)} |")
    if not rows:
        return ""
    return "\n".join(["## General ability (lm-eval, before vs after the edits)", "",
                      "| edits | task | metric | before | after | delta | stderr |",
                      "|---|---|---|---:|---:|---:|---:|",
                      *rows])


def paper_comparison_table(runs: Sequence[dict]) -> str:
    """Single-mode runs beside the published Llama-2-7b-chat numbers: one table per dataset,
    rows = metrics, two columns per method (ours | paper). Different models: read the shape."""
    from .reference import REFERENCE_LABEL, reference

    single = [r for r in runs if r.get("mode") == "single" and not r.get("trained_on")]
    parts = []
    for ds in [d for d in NAMES if any(r["dataset"] == d for r in single)]:
        rs = sorted((r for r in single if r["dataset"] == ds), key=lambda r: r["method"])
        model = model_name(rs[0].get("model")) or "ours"
        head = " | ".join(f"{r['method']} ours "
                          f"(n={r.get('n', '–')}{' of ' + str(r['n_requested']) if r.get('in_progress') else ''})"
                          f" | {r['method']} paper" for r in rs)
        lines = [f"#### {NAMES[ds]} (ours: {model})", "", f"| metric | {head} |", "|---|" + "---:|" * (2 * len(rs))]
        cols = [paper_rows(r) for r in rs]
        for row in ROWS:
            if any(c[row] is not None for c in cols):
                name = "Locality (KL, lower better)" if row == "Locality" and ds == "convsent" else row
                cells = [f"{_fmt(c[row])} | {_fmt(reference(ds, row, r['method']))}" for c, r in zip(cols, rs)]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    if not parts:
        return ""
    return "\n\n".join([f"## Ours beside {REFERENCE_LABEL}",
                         "The paper's numbers are for Llama-2-7b-chat on the full test splits; ours are the "
                         "model named in each heading. Different models, same metric definitions.",
                         *parts])


def cross_domain_table(runs: Sequence[dict]) -> str:
    """Trained editors evaluated off their training domain: one row per (method, source ⇒ target,
    mode), with in-domain runs of the same methods (source = target) for comparison when present."""
    trained = [r for r in runs if r.get("trained_on")]
    if not trained:
        return ""
    lines = ["## Cross-domain editing (trained on ⇒ evaluated on)", "",
             "| method | source ⇒ target | mode | " + " | ".join(ROWS[:4]) + " | n |",
             "|---|---|---|" + "---:|" * 5]
    for r in sorted(trained, key=lambda r: (r["method"], r["trained_on"], r["dataset"], r["mode"])):
        rows = paper_rows(r)
        src, tgt = NAMES.get(r["trained_on"], r["trained_on"]), NAMES.get(r["dataset"], r["dataset"])
        lines.append(f"| {r['method']} | {src} ⇒ {tgt} | {r['mode']} | "
                     + " | ".join(_fmt(rows[k]) for k in ROWS[:4]) + f" | {r.get('n', '–')} |")
    return "\n".join(lines)


def _cell(text: Any) -> str:
    return "–" if text is None else (str(text).replace("|", "\\|").replace("\n", " ") or "(empty)")


def case_tables(runs: Sequence[dict], n: int) -> str:
    """The KnowEdit study's "one case across methods" table per dataset: for the first ``n`` records of the
    single-mode runs, the prompt, target, the unedited model's generated answer and each method's
    (✓ = starts with the target); – where a run has no generated answer for the record."""
    from .resultlog import read_result_lines

    single = [r for r in runs if r.get("mode") == "single" and r.get("_file")]
    parts = []
    for ds in sorted({r["dataset"] for r in single}):
        rs = sorted((r for r in single if r["dataset"] == ds), key=lambda r: (r["method"], str(r.get("model"))))
        stems = [re.sub(r"\.(summary|meta)\.json$", "", r["_file"]) for r in rs]
        lines = [read_result_lines(f"{st}.jsonl", ("index",))[0] for st in stems]
        idx = sorted({k[0] for d in lines for k in d})[:n]
        if not idx:
            continue
        rows = [f"### Cases: {NAMES.get(ds, ds)} — single", "",
                "| # | prompt | target | unedited answer | " + " | ".join(_labels(rs)) + " |",
                "|---" * (4 + len(rs)) + "|"]
        for i in idx:
            recs = [d.get((i,)) for d in lines]
            first = next(x for x in recs if x is not None)
            gens = [((x or {}).get("post") or {}).get("generation") or {} for x in recs]
            pre = next((g["rewrite"]["answer_pre"][0] for g in gens if g.get("rewrite", {}).get("answer_pre")), None)
            cells = []
            for g in gens:
                rw = g.get("rewrite") or {}
                ok = {1.0: " ✓", 0.0: " ✗"}.get((rw.get("success") or [None])[0], "")
                cells.append(_cell(rw["answer"][0]) + ok if rw.get("answer") else "–")
            rows.append(f"| {i} | {_cell(first.get('prompt'))} | {_cell(first.get('target_new'))} | {_cell(pre)} | "
                        + " | ".join(cells) + " |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def build_report(folders: Sequence[str | Path], out: str | Path, title: str = "KnowEdit results",
                 paper: bool = False, cases: int = 0) -> str:
    """Merge every run under ``folders`` into ``<out>/report.md`` (+ ``sequential-<dataset>.png``);
    ``paper=True`` adds single-mode tables beside the published Llama-2-7b-chat numbers;
    ``cases=N`` adds :func:`case_tables` for N records."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_summaries(folders)
    parts = [f"# {title}", "",
             "Scores x100 as in the KnowEdit paper (EasyEdit definitions); Locality = share of answer tokens "
             "unchanged vs the unedited model; sequential columns are the last checkpoint. Rows marked "
             "(generated) score greedy answers instead: the normalised answer starts with the target "
             "(F1 rows: token F1), Locality = the answer is unchanged vs the unedited model's.", ""]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((_pool_key(r), r["mode"]), []).append(r)
    for (ds, mode), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: (r["method"], str(r.get("model"))))
        name = pool_name(rs[0])
        parts += [f"## {name} — {mode}", "", run_table(rs), ""]
        if mode == "sequential":
            parts += [_curve_tables(rs)]
            for label, r in zip(_labels(rs), rs):
                cost = cost_table(r)
                parts += [f"Cost vs number of edits, {label}:", "", cost, ""] if cost else []
            png = plot_sequential(rs, out / ("sequential-" + re.sub(r"[^\w.-]+", "_", ds) + ".png"),
                                  f"{name}: sequential editing")
            if png is not None:
                parts += [f"![{ds} sequential]({png.name})", ""]
    if not runs:
        parts += ["(no *.summary.json found)", ""]
    from .counterfact import memit_report

    memit = memit_report(runs, _labels(runs))
    if memit:
        parts += ["## CounterFact protocol (ROME/MEMIT/AlphaEdit metrics)", "", memit, ""]
    if paper:
        comparison = paper_comparison_table(runs)
        if comparison:
            parts += [comparison, ""]
    if cases > 0:
        table = case_tables(runs, cases)
        if table:
            parts += ["## Cases: generated answers across methods", "", table, ""]
    errors = error_section(runs, out, _labels(runs))
    if errors:
        parts += ["## Why generated answers fail", "", errors, ""]
    cross = cross_domain_table(runs)
    if cross:
        parts += [cross, ""]
    general = general_ability_table(folders)
    if general:
        parts += [general, ""]
    text = "\n".join(parts).rstrip() + "\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    return text
