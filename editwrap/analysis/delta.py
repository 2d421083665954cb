"""ΔW statistics of weight-delta edits (ROME, MEMIT, PMET, AlphaEdit, FT-L/FT-M, MEND, UltraEdit).

Why: the KnowEdit study asks what makes some editors keep locality; the size and shape of each
edit's weight change is the first thing to compare. Per edit and edited module: Frobenius norm,
norm relative to the base weight, numerical rank, effective rank (Roy & Vetterli 2007:
``exp(H(p))``, ``p_i = σ_i / Σσ``), the top singular values; the layers touched; and the cosine
overlap between edits' deltas on the same module (and over all modules). Low-rank parts
(``ΔW = U Vᵀ``, :mod:`editwrap.entries.delta`) are never expanded: singular values come from the
r×r core of two QR factorisations, inner products from r×r products
(:func:`editwrap.ops.norms._fro2`). Numerical rank counts ``σ_i > σ_max · max(m, n) · ε_float32``
(NumPy ``matrix_rank``'s default tolerance; the factors are stored in float32).

Each edit's locality, when known, is set beside its norm: from the KnowEdit results JSONL saved
beside a sequential run's ``<stem>.stack`` (``<stem>.jsonl``; there locality is measured with the
whole stack at that checkpoint applied), or, with ``facts``, by editing each fact alone and scoring
it with :class:`editwrap.evals.measure.Scorer` (pre, push, post, pop: the single-mode protocol).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..entries.delta import DeltaEntry
from ..ops.norms import _fro2, weight_norm
from ..stack import Edit, load_stack_dir
from .io import write_json, write_png

__all__ = ["delta_report", "part_inner", "singular_values", "effective_rank", "numerical_rank",
           "stack_localities", "edit_and_score", "plot_delta"]

_EPS32 = float(torch.finfo(torch.float32).eps)
Scores = dict[str, float | None]  # {"locality": .., "rewrite_acc": ..} of one edit


def part_inner(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """⟨ΔA, ΔB⟩_F of two delta parts (low-rank ``U``/``V`` and/or dense ``D``) via small products."""
    total = 0.0
    if "U" in a and "U" in b:
        total += _fro2(a["U"], a["V"], b["U"], b["V"])
    if "D" in a and "D" in b:
        total += float((a["D"].double() * b["D"].double()).sum())
    for lr, d in ((a, b), (b, a)):
        if "U" in lr and "D" in d:  # ⟨U Vᵀ, D⟩ = Σ U ⊙ (D V)
            total += float((lr["U"].double() * (d["D"].double() @ lr["V"].double())).sum())
    return total


def singular_values(part: dict[str, torch.Tensor]) -> torch.Tensor:
    """Descending singular values of the part's ΔW (float64); U Vᵀ = Q_u (R_u R_vᵀ) Q_vᵀ, so a
    rank-r part costs two thin QRs and an r×r SVD."""
    if "U" in part and "D" not in part:
        ru = torch.linalg.qr(part["U"].double())[1]
        rv = torch.linalg.qr(part["V"].double())[1]
        return torch.linalg.svdvals(ru @ rv.T)
    dense = part["D"].double() + (part["U"].double() @ part["V"].double().T if "U" in part else 0)
    return torch.linalg.svdvals(dense)


def numerical_rank(s: torch.Tensor, shape: Sequence[int]) -> int:
    """Singular values above ``σ_max · max(shape) · ε_float32``."""
    if not len(s) or float(s[0]) == 0.0:
        return 0
    return int((s > s[0] * max(shape) * _EPS32).sum())


def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank ``exp(−Σ p_i log p_i)``, ``p = σ / Σσ`` (1 for rank one,
    r for r equal singular values)."""
    s = s[s > 0]
    if not len(s):
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def _shape(part: dict[str, torch.Tensor]) -> tuple[int, int]:
    if "U" in part:
        return part["U"].shape[0], part["V"].shape[0]
    return part["D"].shape[0], part["D"].shape[1]


def layer_of(module: str) -> int | None:
    """The first numeric component of a module name (``model.layers.7.mlp.down_proj`` → 7)."""
    m = re.search(r"(?:^|\.)(\d+)(?:\.|$)", module)
    return int(m.group(1)) if m else None


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    if len(xs) < 3:
        return None
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return _r(float((x * y).sum()) / den, 4) if den > 0 else None


def delta_report(edits: Sequence[Edit], model: Any = None, *, labels: Sequence[str] | None = None,
                 localities: Sequence[Scores | None] | None = None, top_k: int = 8) -> dict[str, Any]:
    """Statistics of the weight-delta edits among ``edits`` (others are listed under ``skipped``).

    ``model``: the base model, for norms relative to ‖W‖_F (per edit: ‖ΔW‖ over all its modules
    divided by ‖W‖ over the same modules). ``labels``: a group name per edit (e.g. its stack).
    ``localities``: per edit ``{"locality": .., "rewrite_acc": ..}`` or None.
    """
    labels = list(labels) if labels is not None else [e.method for e in edits]
    localities = list(localities) if localities is not None else [None] * len(edits)
    rows, keep, skipped = [], [], []
    wnorm: dict[str, float] = {}
    for i, e in enumerate(edits):
        if e.entry.kind != DeltaEntry.kind:
            skipped.append({"label": labels[i], "id": e.id, "method": e.method, "kind": e.entry.kind})
            continue
        mods, dd, ww = {}, 0.0, 0.0
        for name, part in sorted(e.entry.parts.items()):
            s = singular_values(part)
            shape = _shape(part)
            fro = float(s.square().sum().sqrt())
            dd += fro * fro
            if model is not None:
                wnorm.setdefault(name, weight_norm(model, name))
                ww += wnorm[name] ** 2
            mods[name] = {"layer": layer_of(name), "shape": list(shape),
                          "factor_rank": part["U"].shape[1] if "U" in part else None,
                          "fro": _r(fro), "rel_norm": _r(fro / wnorm[name]) if model is not None else None,
                          "rank": numerical_rank(s, shape), "effective_rank": _r(effective_rank(s), 4),
                          "top_singular_values": [_r(float(x)) for x in s[:top_k]]}
        loc = localities[i] or {}
        rows.append({"label": labels[i], "id": e.id, "method": e.method, "n_facts": len(e.facts),
                     "prompt": e.facts[0].text_prompt if e.facts else None,
                     "layers": sorted({m["layer"] for m in mods.values() if m["layer"] is not None}),
                     "fro": _r(math.sqrt(dd)), "rel_norm": _r(math.sqrt(dd / ww)) if ww > 0 else None,
                     "locality": _r(loc.get("locality")), "rewrite_acc": _r(loc.get("rewrite_acc")), "modules": mods})
        keep.append(e)
    return {"edits": rows, "skipped": skipped, "overlap": _overlaps(keep),
            "summary": _summary(rows), "rank_tolerance": "sigma_max * max(m, n) * eps_float32"}


def _overlaps(edits: Sequence[Edit]) -> dict[str, Any]:
    """Cosine of the flattened deltas between every pair of edits: per shared module, and over all
    modules (modules one edit does not touch add nothing to the inner product)."""
    n = len(edits)
    modules = sorted({m for e in edits for m in e.entry.parts})
    gram = {m: [[None] * n for _ in range(n)] for m in modules}
    for m in modules:
        for i in range(n):
            for j in range(i, n):
                pa, pb = edits[i].entry.parts.get(m), edits[j].entry.parts.get(m)
                if pa is not None and pb is not None:
                    gram[m][i][j] = gram[m][j][i] = part_inner(pa, pb)
    sq = [sum(gram[m][i][i] or 0.0 for m in modules) for i in range(n)]
    total = [[sum(gram[m][i][j] or 0.0 for m in modules) for j in range(n)] for i in range(n)]

    def cos(x: float | None, a: float, b: float) -> float | None:
        return None if x is None or a <= 0 or b <= 0 else _r(x / math.sqrt(a * b), 4)

    per = {m: [[cos(g[i][j], g[i][i] or 0, g[j][j] or 0) for j in range(n)] for i in range(n)] for m, g in gram.items()}
    return {"ids": [e.id for e in edits], "all": [[cos(total[i][j], sq[i], sq[j]) for j in range(n)] for i in range(n)],
            "modules": per}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per label: means of norms and ranks, and the Pearson correlation of norm with locality."""
    out: dict[str, Any] = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = [r for r in rows if r["label"] == label]
        mods = [m for r in rs for m in r["modules"].values()]
        key = "rel_norm" if all(r["rel_norm"] is not None for r in rs) else "fro"
        paired = [(r[key], r["locality"]) for r in rs if r["locality"] is not None]
        mean = lambda v: _r(sum(v) / len(v), 4) if v else None  # noqa: E731
        out[label] = {"edits": len(rs), "mean_fro": mean([r["fro"] for r in rs]),
                      "mean_rel_norm": mean([r["rel_norm"] for r in rs if r["rel_norm"] is not None]),
                      "mean_rank": mean([m["rank"] for m in mods]),
                      "mean_effective_rank": mean([m["effective_rank"] for m in mods]),
                      "layers": sorted({x for r in rs for x in r["layers"]}),
                      "mean_locality": mean([p[1] for p in paired]),
                      f"pearson_{key}_locality": _pearson([p[0] for p in paired], [p[1] for p in paired])}
    return out


def _mean(vals: Any) -> float | None:
    flat = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(flat) / len(flat) if flat else None


def _record_scores(rec: dict[str, Any]) -> Scores:
    post = rec.get("post", rec)
    return {"locality": _mean(v for vs in (post.get("locality") or {}).values() for v in vs),
            "rewrite_acc": _mean(post.get("rewrite_acc") or [])}


def stack_localities(stack_dir: str | Path, edits: Sequence[Edit]) -> tuple[list[Scores | None], str | None]:
    """Per edit, the mean locality / rewrite accuracy of its facts from ``<stem>.jsonl`` beside a
    ``<stem>.stack`` directory: the lines of the checkpoint equal to the stack's fact count (the
    stack a sequential run saved there), matched by prompt. ``(all None, None)`` without a match."""
    d = Path(stack_dir)
    jsonl = d.with_suffix(".jsonl")
    if d.suffix != ".stack" or not jsonl.exists():
        return [None] * len(edits), None
    n = sum(len(e.facts) for e in edits)
    by_prompt: dict[str, dict[str, Any]] = {}
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of an interrupted run
        if rec.get("checkpoint", n) == n and "prompt" in rec:
            by_prompt[rec["prompt"]] = rec
    out: list[Scores | None] = []
    for e in edits:
        got = [_record_scores(by_prompt[f.prompt]) for f in e.facts if f.prompt in by_prompt]
        out.append({k: _mean(g[k] for g in got) for k in ("locality", "rewrite_acc")} if got else None)
    found = any(o is not None for o in out)
    return out, (f"{jsonl} (checkpoint {n}: measured with the whole stack applied)" if found else None)


def edit_and_score(model: Any, facts: Sequence[Any], method: str, hparams: dict[str, Any] | None = None,
                   progress: bool = True) -> tuple[list[Edit], list[Scores]]:
    """Edit each fact alone (``compute_edit``), score it before and after with
    :class:`~editwrap.evals.measure.Scorer` (teacher-forced; no generation) and pop it again."""
    from editwrap.evals.measure import Scorer

    scorer = Scorer(model, generation=False)
    edits, scores = [], []
    for i, f in enumerate(facts):
        t0 = time.time()
        pre = scorer.pre(f)
        e = model.compute_edit(f, method, hparams=dict(hparams or {}))
        with model.push(e):
            post = scorer.post(f, pre)
        edits.append(e)
        scores.append(_record_scores(post))
        if progress:
            print(f"[{i + 1}/{len(facts)}] {f.text_prompt!r} -> {f.target_new!r}: locality {scores[-1]['locality']}, "
                  f"rewrite {scores[-1]['rewrite_acc']} ({time.time() - t0:.1f} s)", flush=True)
    return edits, scores


def plot_delta(report: dict[str, Any], path: str | Path) -> Path:
    """Singular value spectra, norm vs locality, and the edits' overlap matrix (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["edits"]
    groups = list(dict.fromkeys(r["label"] for r in rows))
    colors = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    for r in rows:
        for m in r["modules"].values():
            s = [x for x in m["top_singular_values"] if x and x > 0]
            ax.plot(range(1, len(s) + 1), s, "-o", ms=2, lw=0.6, alpha=0.5, color=colors[r["label"]])
    ax.set_yscale("log")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("σ_i of ΔW (per edit and module)")
    ax.set_title("singular value spectra", fontsize=10)
    ax.legend(handles=[plt.Line2D([], [], color=colors[g], label=g) for g in groups], fontsize=7)
    ax = axes[1]
    key = "rel_norm" if all(r["rel_norm"] is not None for r in rows) else "fro"
    has_loc = any(r["locality"] is not None for r in rows)
    for g in groups:
        pts = [(r[key], r["locality"]) for r in rows if r["label"] == g and r["locality"] is not None]
        if pts:
            ax.scatter(*zip(*pts), s=14, color=colors[g], label=g)
    if has_loc:
        ax.legend(fontsize=7)
    ax.set_xlabel("‖ΔW‖_F / ‖W‖_F" if key == "rel_norm" else "‖ΔW‖_F")
    ax.set_ylabel("locality (per edit)")
    ax.set_title("norm vs locality" if has_loc else "no locality data", fontsize=10)
    ax = axes[2]
    mat = torch.tensor([[float("nan") if x is None else x for x in row] for row in report["overlap"]["all"]])
    if mat.numel():
        im = ax.imshow(mat.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046).set_label("cosine of flattened ΔW", fontsize=8)
        bounds = [i for i in range(1, len(rows)) if rows[i]["label"] != rows[i - 1]["label"]]
        for b in bounds:
            ax.axhline(b - 0.5, color="k", lw=0.8)
            ax.axvline(b - 0.5, color="k", lw=0.8)
    ax.set_title("overlap between edits (all modules)", fontsize=10)
    ax.set_xlabel("edit")
    ax.set_ylabel("edit")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _load_facts(path: str, n: int | None) -> list[Any]:
    """Plain Fact JSON/JSONL, else KnowEdit-format records (their locality probes included)."""
    from editwrap.evals.datasets import load_dataset
    from editwrap.facts import load_facts

    try:
        return load_facts(path)[:n]
    except ValueError:
        return list(load_dataset(None, path, n=n))


def cmd_delta(args: argparse.Namespace) -> int:
    from ..cli import _load_model, _parse_hparams

    if not args.stacks and not args.facts:
        raise ValueError("give saved stack directories and/or --facts FILE")
    model = _load_model(args)
    edits: list[Edit] = []
    labels: list[str] = []
    locs: list[Any] = []
    sources: dict[str, str | None] = {}
    for d in args.stacks:
        es = load_stack_dir(d)  # statistics only: the stack is not applied, so any base is accepted
        made_on = json.loads((Path(d) / "edits.json").read_text(encoding="utf-8")).get("base_fingerprint")
        if made_on != model.fingerprint():
            print(f"warning: {d} was made on another base model (fingerprint {made_on}); norms relative to "
                  f"this model's weights ({model.name_or_path}) compare unlike things", file=sys.stderr)
        got, src = stack_localities(d, es)
        label = Path(d).name.removesuffix(".stack")
        edits += es
        labels += [label] * len(es)
        locs += got
        sources[label] = src
    if args.facts:
        es, got = edit_and_score(model, _load_facts(args.facts, args.n), args.method, _parse_hparams(args.hparam))
        label = f"{args.method} ({Path(args.facts).stem}, single)"
        edits += es
        labels += [label] * len(es)
        locs += got
        sources[label] = f"{args.facts}: each fact edited alone, scored and popped"
    rep = delta_report(edits, model, labels=labels, localities=locs, top_k=args.top_k)
    rep["locality_source"] = sources
    rep["base_model"] = model.name_or_path
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "delta.json", rep)
    png = write_png(plot_delta, rep, out / "delta.png")
    for label, s in rep["summary"].items():
        print(f"{label}: {json.dumps(s)}")
    if rep["skipped"]:
        print(f"skipped {len(rep['skipped'])} edits that are not weight deltas: "
              + ", ".join(sorted({f"{s['method']} ({s['kind']})" for s in rep["skipped"]})))
    print(f"wrote {out / 'delta.json'}" + (f" and {out / 'delta.png'}" if png else ""))
    return 0


def register(subparsers: Any, model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    from .cli import add_out

    p = subparsers.add_parser("delta", help="ΔW of weight-delta edits: norms, ranks, spectra, overlaps, vs locality")
    model_args(p)
    p.add_argument("stacks", nargs="*", metavar="STACK_DIR",
                   help="saved stacks; a KnowEdit <stem>.stack relates to the locality in <stem>.jsonl beside it")
    p.add_argument("--facts", default=None, help="also edit each fact of this file alone and score its locality")
    p.add_argument("--method", default="rome", help="method for --facts (default rome)")
    p.add_argument("--n", type=int, default=None, help="first N facts of --facts")
    p.add_argument("--hparam", action="append", help="hyperparameter override for --facts: name=value")
    p.add_argument("--top-k", type=int, default=8, help="singular values kept per module")
    add_out(p, "results/analysis")
    p.set_defaults(func=cmd_delta)
