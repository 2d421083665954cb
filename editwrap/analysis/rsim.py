"""RSim: do related facts get located in the same layers? (KnowEdit study, "Knowledge Locating in LLMs").

Why: locate-then-edit methods assume a fact lives somewhere specific. If that were so, facts chained
from one another (*consistency*: "X was created in Japan" → "the language of X's country is
Japanese") should be located alike, and a fact and an unrelated fact about the same subject
(*relevance*) should not. The study (after KLoB, Ju et al. 2023) scores this with the Relative
Similarity of the located regions,

    RSim = max((Sim_cand − Sim_all) / (1 − Sim_all), 0),

where ``Sim_cand`` is the mean similarity over the candidate (related) pairs and ``Sim_all`` the
mean over all pairs (chance level), and plots it against the number ``k`` of top layers kept.
Here the similarity of two facts is the Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of their top-``k``
layer sets (``--sim overlap``: ``|A ∩ B| / k``); ``Sim_all`` is taken over all pairs of located
facts from *different* records. RSim is ``None`` where ``Sim_all`` is 1 (``k`` = every layer).

KLoB's data is not installable here, so both sets are built from KnowEdit records: consistency
pairs are (a record's fact, each of its portability ``Reasoning`` / ``Logical_Generalization``
probes), relevance pairs are (a record's fact, each of its ``Relation_Specificity`` locality
probes, which ask about the same subject). Portability answers of ZsRE and WikiData_counterfact
follow the counterfactual edit; WikiData_recent's are true chained facts.

Locating method: per-layer gradient × activation at the MLP outputs (the first-order estimate of
what zeroing that layer's MLP output over the prompt would do to the answer's log-probability;
"attribution patching"): ``score_l = |Σ_t ∂ log p(answer | prompt) / ∂ m_l[t] · m_l[t]|`` over the
prompt's positions ``t``. One forward and one backward per prompt, deterministic; causal tracing
(:mod:`editwrap.analysis.trace`) costs ~100× more per prompt.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..arch import arch_of
from ..ops.forward import token_ids
from ..ops.hooks import patch_output
from .io import write_json, write_png

__all__ = ["CHAIN_KEYS", "RELEVANCE_KEYS", "top_layers", "set_similarity", "rsim", "rsim_curve",
           "layer_attribution", "build_items", "pick_case", "rsim_study", "plot_rsim"]

CHAIN_KEYS = ("Reasoning", "Logical_Generalization")
RELEVANCE_KEYS = ("Relation_Specificity",)
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")


def top_layers(scores: Sequence[float], k: int) -> frozenset[int]:
    """The ``k`` highest-scoring layers (ties go to the lower layer, so the choice is deterministic)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return frozenset(order[:k])


def set_similarity(a: frozenset[int], b: frozenset[int], sim: str = "jaccard") -> float:
    """Jaccard ``|A∩B|/|A∪B|`` or overlap ``|A∩B|/min(|A|,|B|)`` of two located sets (1 if both empty)."""
    if sim not in ("jaccard", "overlap"):
        raise ValueError(f"sim must be 'jaccard' or 'overlap', got {sim!r}")
    den = len(a | b) if sim == "jaccard" else min(len(a), len(b))
    return len(a & b) / den if den else 1.0


def rsim(sim_cand: float, sim_all: float) -> float | None:
    """``max((Sim_cand − Sim_all)/(1 − Sim_all), 0)``; None when ``Sim_all`` ≥ 1 (nothing to beat)."""
    if sim_all >= 1.0:
        return None
    return max((sim_cand - sim_all) / (1.0 - sim_all), 0.0)


def _mean_sim(located: Sequence[frozenset[int]], pairs: Sequence[tuple[int, int]], sim: str) -> float | None:
    vals = [set_similarity(located[i], located[j], sim) for i, j in pairs]
    return sum(vals) / len(vals) if vals else None


def rsim_curve(scores: Sequence[Sequence[float]], sets: dict[str, Sequence[tuple[int, int]]],
               all_pairs: Sequence[tuple[int, int]], ks: Sequence[int], sim: str = "jaccard") -> dict[str, Any]:
    """Per ``k``: ``Sim_all`` over ``all_pairs`` and, per named set of candidate pairs (indices into
    ``scores``), ``Sim_cand`` and RSim. Returns ``{"k": [...], "sim_all": [...], name: {...}}``."""
    out: dict[str, Any] = {"k": list(ks), "sim_all": []}
    for name in sets:
        out[name] = {"pairs": len(sets[name]), "sim_cand": [], "rsim": []}
    for k in ks:
        located = [top_layers(s, k) for s in scores]
        s_all = _mean_sim(located, all_pairs, sim)
        out["sim_all"].append(_r(s_all))
        for name, pairs in sets.items():
            s_c = _mean_sim(located, pairs, sim)
            out[name]["sim_cand"].append(_r(s_c))
            out[name]["rsim"].append(_r(rsim(s_c, s_all)) if s_c is not None and s_all is not None else None)
    return out


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def layer_attribution(model: Any, prompt: str, answer: str | None = None) -> tuple[list[float], str]:
    """Per layer, ``|Σ_t grad · activation|`` of the answer's log-probability at the MLP output over
    the prompt's tokens; and the answer used (``None``: the model's own top next token).

    A zero tensor with ``requires_grad`` is added to each MLP output so that ``autograd.grad``
    gives the total derivative there without touching any parameter's ``.grad``."""
    tok, arch = model.tokenizer, arch_of(model)
    device = next(model.parameters()).device
    p_ids = token_ids(tok, prompt)
    if answer is None:
        with torch.no_grad():
            top = int(model(input_ids=torch.tensor([p_ids], device=device), use_cache=False).logits[0, -1].argmax())
        a_ids, answer = [top], tok.decode([top])
    else:
        full = token_ids(tok, prompt + " " + answer.strip())
        a_ids = full[len(p_ids):] if full[:len(p_ids)] == p_ids \
            else list(tok(" " + answer.strip(), add_special_tokens=False)["input_ids"])
    ids = torch.tensor([p_ids + a_ids], device=device)
    acts: list[torch.Tensor] = []
    eps: list[torch.Tensor] = []

    def probe(out: torch.Tensor, _inp: Any) -> torch.Tensor:
        e = torch.zeros_like(out, requires_grad=True)
        acts.append(out.detach())
        eps.append(e)
        return out + e

    with contextlib.ExitStack() as st, torch.enable_grad():
        for layer in range(arch.n_layers):
            st.enter_context(patch_output(model, arch.mlp_out_at(layer), probe))
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
        n = len(p_ids)
        logp = logits[n - 1:n - 1 + len(a_ids)].log_softmax(-1)
        target = logp.gather(1, torch.tensor(a_ids, device=device)[:, None]).sum()
        grads = torch.autograd.grad(target, eps)
    scores = [abs(float((g[0, :n].double() * a[0, :n].double()).sum())) for g, a in zip(grads, acts)]
    return scores, answer


def build_items(facts: Sequence[Any], max_probes: int = 4
                ) -> tuple[list[dict[str, Any]], dict[str, list[tuple[int, int]]]]:
    """Located items (a record's fact, its chain probes, its same-subject probes) and the candidate
    pairs of each set: ``consistency`` (fact, chain probe) and ``relevance`` (fact, same-subject probe)."""
    items: list[dict[str, Any]] = []
    sets: dict[str, list[tuple[int, int]]] = {"consistency": [], "relevance": []}
    for r, f in enumerate(facts):
        chain = [(k, p) for k in CHAIN_KEYS for p in f.portability.get(k, [])][:max_probes]
        rel = [(k, p) for k in RELEVANCE_KEYS for p in f.locality.get(k, [])][:max_probes]
        if not chain and not rel:
            continue
        base = len(items)
        items.append({"record": r, "role": "fact", "group": None, "prompt": f.text_prompt,
                      "truth": f.ground_truth or f.target_new})
        for name, probes in (("consistency", chain), ("relevance", rel)):
            for k, p in probes:
                sets[name].append((base, len(items)))
                items.append({"record": r, "role": name, "group": k, "prompt": p.prompt, "truth": p.answer})
    return items, sets


def pick_case(facts: Sequence[Any], subject: str | None = None) -> int | None:
    """The case-study record: the first whose subject contains ``subject``; else the first whose subject
    has an acronym (as the study's SMAP) with both chain and same-subject probes, then an acronym with
    either, then any record with both."""
    def has(f: Any, keys: Sequence[str], group: dict) -> bool:
        return any(group.get(k) for k in keys)

    tests: list[Callable[[Any], bool]]
    if subject:
        tests = [lambda f: subject.lower() in (f.subject or "").lower()]
    else:
        acr = lambda f: bool(_ACRONYM.search(f.subject or ""))  # noqa: E731
        chain = lambda f: has(f, CHAIN_KEYS, f.portability)  # noqa: E731
        rel = lambda f: has(f, RELEVANCE_KEYS, f.locality)  # noqa: E731
        tests = [lambda f: acr(f) and chain(f) and rel(f), lambda f: acr(f) and (chain(f) or rel(f)),
                 lambda f: chain(f) and rel(f)]
    for t in tests:
        for i, f in enumerate(facts):
            if t(f):
                return i
    return None


def rsim_study(model: Any, facts: Sequence[Any], *, ks: Sequence[int] | None = None, sim: str = "jaccard",
               answer: str = "truth", max_probes: int = 4, case: int | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Locate every item (:func:`build_items`), then the RSim curves and the case study of record ``case``."""
    if answer not in ("truth", "model"):
        raise ValueError(f"answer must be 'truth' or 'model', got {answer!r}")
    t0 = time.time()
    n_layers = arch_of(model).n_layers
    ks = list(ks) if ks else list(range(1, n_layers))
    if any(k < 1 or k > n_layers for k in ks):
        raise ValueError(f"every k must be in 1..{n_layers}, got {ks}")
    items, sets = build_items(facts, max_probes)
    if not items:
        raise ValueError("no record has portability Reasoning/Logical_Generalization or Relation_Specificity probes")
    for i, it in enumerate(items):
        it["scores"], it["answer"] = layer_attribution(model, it["prompt"], it["truth"] if answer == "truth" else None)
        if progress and (i + 1) % 25 == 0:
            print(f"located {i + 1}/{len(items)} ({time.time() - t0:.0f} s)", flush=True)
    all_pairs = [(i, j) for i in range(len(items)) for j in range(i + 1, len(items))
                 if items[i]["record"] != items[j]["record"]]
    scores = [it["scores"] for it in items]
    curve = rsim_curve(scores, sets, all_pairs, ks, sim)
    res: dict[str, Any] = {
        "n_layers": n_layers, "sim": sim, "answer_from": answer, "records": len({it["record"] for it in items}),
        "items": len(items), "all_pairs": len(all_pairs), "curve": curve,
        "locating": "per-layer |sum over prompt tokens of grad x activation| of log p(answer) at the MLP outputs",
        "sets": {"consistency": f"(fact, portability {'/'.join(CHAIN_KEYS)} probe) of the same record",
                 "relevance": f"(fact, locality {'/'.join(RELEVANCE_KEYS)} probe: same subject, other relation)",
                 "all": "every pair of located items from different records"},
        "data_note": "KLoB is not installable here; both sets are built from KnowEdit records",
    }
    if case is not None:
        c = [i for i, it in enumerate(items) if it["record"] == case]
        if c:
            f0 = facts[case]
            rows = [{k: items[i][k] for k in ("role", "group", "prompt", "answer")} |
                    {"scores": [_r(s, 6) for s in items[i]["scores"]],
                     "top5": sorted(top_layers(items[i]["scores"], 5))}
                    for i in c]
            pair_sim = {f"{items[j]['role']}: {items[j]['prompt']} → {items[j]['answer'].strip()}":
                        [_r(set_similarity(top_layers(items[c[0]]["scores"], k),
                                           top_layers(items[j]["scores"], k), sim))
                         for k in ks] for j in c[1:]}
            res["case"] = {"record": case, "subject": f0.subject, "prompt": f0.text_prompt, "items": rows,
                           "similarity_to_fact": pair_sim}
    res["located"] = [{k: it[k] for k in ("record", "role", "prompt", "answer")}
                      | {"top5": sorted(top_layers(it["scores"], 5))}
                      for it in items]
    res["seconds"] = round(time.time() - t0, 1)
    return res


def plot_rsim(res: dict[str, Any], path: str | Path) -> Path:
    """RSim (and Sim_cand, Sim_all) vs k; the case study's per-layer scores (rows: fact and its probes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = res["curve"]
    has_case = "case" in res
    fig, axes = plt.subplots(1, 2 if has_case else 1, figsize=(13 if has_case else 6, 4.4), squeeze=False)
    ax = axes[0][0]
    for name, color in (("consistency", "tab:blue"), ("relevance", "tab:orange")):
        if c[name]["pairs"]:
            ax.plot(c["k"], [float("nan") if v is None else v for v in c[name]["rsim"]], "-o", ms=3, color=color,
                    label=f"RSim {name} ({c[name]['pairs']} pairs)")
            ax.plot(c["k"], [float("nan") if v is None else v for v in c[name]["sim_cand"]], ":", color=color,
                    label=f"Sim_cand {name}")
    ax.plot(c["k"], c["sim_all"], "--", color="gray", label="Sim_all (chance)")
    ax.axhline(0.6, color="k", lw=0.5, alpha=0.4)
    ax.set_xlabel("k (top layers kept)")
    ax.set_ylabel(f"{res['sim']} similarity / RSim")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"RSim vs k ({res['records']} records, {res['items']} located prompts)", fontsize=10)
    ax.legend(fontsize=7)
    if has_case:
        ax = axes[0][1]
        rows = res["case"]["items"]
        g = torch.tensor([r["scores"] for r in rows], dtype=torch.float64)
        g = g / g.max(1, keepdim=True).values.clamp_min(1e-12)
        ax.imshow(g.numpy(), cmap="Greens", aspect="auto", interpolation="nearest", vmin=0, vmax=1)
        for y, r in enumerate(rows):
            for x in r["top5"]:
                ax.text(x, y, "•", ha="center", va="center", fontsize=8, color="k")
        cut = lambda t, n: t if len(t) <= n else t[:n - 1] + "…"  # noqa: E731
        labels = [f"[{r['role']}] {cut(r['prompt'], 64)} → {cut(r['answer'].strip(), 16)}" for r in rows]
        ax.set_yticks(range(len(rows)), labels, fontsize=6)
        ax.set_xlabel("layer (• = top 5)")
        ax.set_title(f"case: {res['case']['subject']!r} — scores / row max", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def cmd_rsim(args: argparse.Namespace) -> int:
    from editwrap.evals.datasets import load_dataset

    from ..cli import _load_model

    model = _load_model(args)
    facts: list[Any] = []
    for d in args.data:
        facts += list(load_dataset(None, d, n=args.n))
    case = pick_case(facts, args.case)
    ks = list(range(1, args.max_k + 1)) if args.max_k else None
    res = rsim_study(model, facts, ks=ks, sim=args.sim, answer=args.answer, max_probes=args.max_probes, case=case)
    res["data"] = list(args.data)
    res["n_per_file"] = args.n
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "rsim.json", res)
    png = write_png(plot_rsim, res, out / "rsim.png")
    c = res["curve"]
    for name in ("consistency", "relevance"):
        print(f"{name} ({c[name]['pairs']} pairs): RSim by k " + ", ".join(
            f"{k}: {v}" for k, v in zip(c["k"], c[name]["rsim"]) if k <= 10))
    if "case" in res:
        print(f"case: {res['case']['subject']!r} (record {res['case']['record']})")
    print(f"{res['seconds']} s; wrote {out / 'rsim.json'}" + (f" and {out / 'rsim.png'}" if png else ""))
    return 0


def register(subparsers: Any, model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    from .cli import add_out

    p = subparsers.add_parser("rsim", help="knowledge locating: RSim of top-k located layers for chained "
                                           "(consistency) and same-subject (relevance) fact pairs")
    model_args(p)
    p.add_argument("--data", action="append", required=True, help="KnowEdit JSON file (repeatable)")
    p.add_argument("--n", type=int, default=50, help="first N records of each file (default 50)")
    p.add_argument("--max-probes", type=int, default=4, help="probes per record and set (default 4)")
    p.add_argument("--max-k", type=int, default=None, help="largest k (default: layers − 1)")
    p.add_argument("--sim", choices=("jaccard", "overlap"), default="jaccard")
    p.add_argument("--answer", choices=("truth", "model"), default="truth",
                   help="answer to attribute: the record's (truth) or the model's top next token")
    p.add_argument("--case", default=None, help="case-study subject (default: first acronym subject)")
    add_out(p, "results/analysis")
    p.set_defaults(func=cmd_rsim)
