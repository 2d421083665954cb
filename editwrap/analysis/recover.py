"""Edit and recover: editing a fact back vs popping the edit (KnowEdit study, KG vs LLM).

Why: a knowledge graph that adds a triple and deletes it again is exactly what it was; an LLM
can only be *edited back* (a second edit with the original answer as target), which leaves two
weight changes that do not cancel. editwrap's stack can also ``pop()`` the first edit, which
restores the base model bit for bit. This measures both against the unedited model, per fact:

* ``weight_distance``: ‖Σ ΔW‖_F of the summed side-car deltas on the stack (all modules;
  low-rank parts via r×r products, :func:`editwrap.analysis.delta.part_inner`); ``None`` when an
  entry on the stack is not a weight delta;
* ``kl``: mean KL(p_base ‖ p_now) of the next-token distributions at the last token of
  ``n_kl`` unrelated prompts (float64, padding-exact batches);
* ``agreement``: share of the fact's own locality probes whose greedy answer
  (:func:`editwrap.evals.generation.generate_answers`) normalises to the unedited model's answer;
* per fact also: its greedy answer (``same_answer`` as the unedited model's), and the
  teacher-forced log-probabilities of the new target and of the edit-back target.

States: ``edited`` (the first edit on), ``edit_back`` (a second edit of the same prompt and subject
with target = the original answer, the record's ground truth by default, pushed with
``on_conflict="stack"`` on top of the first: the default ``"replace"`` would remove the first edit,
which is recovery by pop in disguise), ``pop`` (both edits popped).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..entries.delta import DeltaEntry
from .delta import part_inner
from .io import write_json, write_png

__all__ = ["STATES", "stack_distance", "next_token_logprobs", "mean_kl", "unrelated_prompts", "recover_study",
           "plot_recover"]

STATES = ("edited", "edit_back", "pop")


def stack_distance(model: Any) -> float | None:
    """‖Σ_edits ΔW‖_F over every module the stack touches (0.0 for an empty stack)."""
    per_module: dict[str, list[dict[str, torch.Tensor]]] = {}
    for e in model.stack.edits:
        if e.entry.kind != DeltaEntry.kind:
            return None
        for name, part in e.entry.parts.items():
            per_module.setdefault(name, []).append(part)
    total = 0.0
    for parts in per_module.values():
        total += sum(part_inner(a, b) for a in parts for b in parts)
    return math.sqrt(max(total, 0.0))


@torch.no_grad()
def next_token_logprobs(model: Any, prompts: Sequence[str], batch_size: int = 25) -> torch.Tensor:
    """Log-softmax (float64) of the next token after each prompt, from left-padded batches whose
    position ids come from the mask (each row as if alone)."""
    from ..ops.forward import pad_id, padded_forward, token_ids

    tok = model.tokenizer
    out = []
    for b in range(0, len(prompts), batch_size):
        seqs = [token_ids(tok, p) for p in prompts[b:b + batch_size]]
        logits, _ = padded_forward(model, seqs, pad_id(tok), "left")
        out.append(logits[:, -1].double().log_softmax(-1).cpu())
    return torch.cat(out)


def mean_kl(base: torch.Tensor, now: torch.Tensor) -> float:
    """Mean over rows of KL(p_base ‖ p_now) from log-probabilities (exactly 0.0 for equal inputs)."""
    return float((base.exp() * (base - now)).sum(-1).mean())


def unrelated_prompts(facts: Sequence[Any], skip: int, n: int) -> list[str]:
    """Up to ``n`` distinct locality-probe prompts of the records after the first ``skip`` (the edited
    ones), in file order: prompts no edited fact asks about."""
    seen: dict[str, None] = {}
    for f in facts[skip:]:
        for probes in f.locality.values():
            for p in probes:
                seen.setdefault(p.prompt, None)
    return list(seen)[:n]


def _answers(model: Any, prompts: Sequence[str], refs: Sequence[str]) -> list[str]:
    from editwrap.evals.generation import answer_budget, generate_answers

    tok = model.tokenizer
    return generate_answers(model, tok, list(prompts), [answer_budget(tok, p, r) for p, r in zip(prompts, refs)])


def _measure(model: Any, base_lp: torch.Tensor | None, kl_prompts: Sequence[str], loc: Sequence[Any],
             base_loc: Sequence[str], fact: Any, said: str, back: str) -> dict[str, Any]:
    from editwrap.evals.generation import answer_match, normalize_answer

    lp = next_token_logprobs(model, kl_prompts) if kl_prompts else None
    got = _answers(model, [p.prompt for p in loc], [p.answer for p in loc]) if loc else []
    ans = _answers(model, [fact.text_prompt], [fact.ground_truth or fact.target_new])[0]  # same budget as ``said``
    return {
        "weight_distance": _r(stack_distance(model)),
        "kl": _r(mean_kl(base_lp, lp)) if lp is not None and base_lp is not None else None,
        "logits_equal": bool(torch.equal(base_lp, lp)) if lp is not None and base_lp is not None else None,
        "agreement": _r(sum(normalize_answer(a) == normalize_answer(b) for a, b in zip(got, base_loc)) / len(loc))
        if loc else None,
        "answer": ans, "same_answer": normalize_answer(ans) == normalize_answer(said),
        "says_new": answer_match(ans, fact.target_new) == 1.0, "says_back": answer_match(ans, back) == 1.0,
        # teacher-forced: does the edit (and the edit back) take even where greedy decoding says something else?
        "logp_new": _r(model.loglikelihood(fact.text_prompt, " " + fact.target_new), 4),
        "logp_back": _r(model.loglikelihood(fact.text_prompt, " " + back), 4),
    }


def _r(x: float | None, nd: int = 8) -> float | None:
    return None if x is None else round(float(x), nd)


def recover_study(model: Any, facts: Sequence[Any], method: str = "rome", hparams: dict[str, Any] | None = None, *,
                  kl_prompts: Sequence[str] = (), back_to: str = "truth", progress: bool = True) -> dict[str, Any]:
    """Edit each fact, then recover by editing back and by popping; measure every state against the
    unedited model. ``back_to``: the edit-back target, ``"truth"`` (the record's ground truth, falling
    back to the unedited model's greedy answer when there is none) or ``"model"`` (the reverse)."""
    from editwrap.facts import Fact

    if back_to not in ("model", "truth"):
        raise ValueError(f"back_to must be 'model' or 'truth', got {back_to!r}")
    if len(model.stack):
        raise ValueError("start from a model with an empty stack (the base is the reference)")
    t0 = time.time()
    kl_prompts = list(kl_prompts)
    base_lp = next_token_logprobs(model, kl_prompts) if kl_prompts else None
    rows = []
    for i, f in enumerate(facts):
        t1 = time.time()
        loc = [p for probes in f.locality.values() for p in probes]
        base_loc = _answers(model, [p.prompt for p in loc], [p.answer for p in loc]) if loc else []
        said = _answers(model, [f.text_prompt], [f.ground_truth or f.target_new])[0]
        order = [said, f.ground_truth] if back_to == "model" else [f.ground_truth, said]
        original = next((a for a in order if a and a.strip()), None)
        row: dict[str, Any] = {"prompt": f.text_prompt, "subject": f.subject, "target_new": f.target_new,
                               "ground_truth": f.ground_truth, "unedited_answer": said, "edit_back_target": original,
                               "locality_probes": len(loc)}
        if original is None:
            row["skipped"] = "no original answer to edit back to"
            rows.append(row)
            continue
        row["unedited_logp_new"] = _r(model.loglikelihood(f.text_prompt, " " + f.target_new), 4)
        row["unedited_logp_back"] = _r(model.loglikelihood(f.text_prompt, " " + original), 4)
        hp = dict(hparams or {})
        model.edit(f, method, hparams=dict(hp))
        try:
            row["edited"] = _measure(model, base_lp, kl_prompts, loc, base_loc, f, said, original)
            back = Fact(prompt=f.prompt, subject=f.subject, relation=f.relation, target_new=original)
            second = model.edit(back, method, hparams=dict(hp), on_conflict="stack")
            row["conflict_policy"] = (second.info.get("conflicts") or {}).get("policy")
            row["stack_depth_edit_back"] = len(model.stack)  # 2: the edit back sits on top of the edit
            row["edit_back"] = _measure(model, base_lp, kl_prompts, loc, base_loc, f, said, original)
            model.pop()
        finally:
            while len(model.stack):
                model.pop()
        row["pop"] = _measure(model, base_lp, kl_prompts, loc, base_loc, f, said, original)
        rows.append(row)
        if progress:
            s = {k: row[k] for k in STATES}
            print(f"[{i + 1}/{len(facts)}] {f.text_prompt!r}: " + "; ".join(
                f"{k} dist {v['weight_distance']} KL {v['kl']} agree {v['agreement']}" for k, v in s.items())
                + f" ({time.time() - t1:.0f} s)", flush=True)
    return {"method": method, "hparams": hparams or {}, "back_to": back_to, "n_facts": len(facts),
            "n_kl_prompts": len(kl_prompts), "kl_prompts": kl_prompts, "facts": rows,
            "summary": _summary(rows), "seconds": round(time.time() - t0, 1)}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per state: means over the facts, and how many facts it left exactly the base model."""
    out: dict[str, Any] = {}
    done = [r for r in rows if "pop" in r]

    def mean(s: str, key: str) -> float | None:
        v = [float(r[s][key]) for r in done if r[s][key] is not None]
        return _r(sum(v) / len(v), 6) if v else None

    for s in STATES:
        exact = [r for r in done if r[s]["weight_distance"] == 0 and r[s]["logits_equal"] is not False
                 and r[s]["agreement"] in (None, 1.0) and r[s]["same_answer"]]
        keys = ("weight_distance", "kl", "agreement", "same_answer", "says_new", "says_back", "logp_new", "logp_back")
        out[s] = {k: mean(s, k) for k in keys} | {"exactly_base": f"{len(exact)}/{len(done)}"}
    return out


def plot_recover(res: dict[str, Any], path: str | Path) -> Path:
    """Bars (mean over facts, dots per fact) of weight distance, KL and locality agreement per state."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in res["facts"] if "pop" in r]
    labels = {"edited": "edited", "edit_back": "edited back\n(2nd edit)", "pop": "pop()"}
    colors = {"edited": "tab:gray", "edit_back": "tab:red", "pop": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, (key, title) in zip(axes, (("weight_distance", "‖ΣΔW‖_F vs base"),
                                       ("kl", f"KL(base ‖ now), {res['n_kl_prompts']} unrelated prompts"),
                                       ("agreement", "locality answers = base's"))):
        for x, s in enumerate(STATES):
            vals = [r[s][key] for r in done if r[s][key] is not None]
            mean = sum(vals) / len(vals) if vals else 0.0
            ax.bar(x, mean, color=colors[s], alpha=0.8)
            ax.scatter([x] * len(vals), vals, s=10, color="k", zorder=3)
            ax.text(x, mean, f"{mean:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(STATES)), [labels[s] for s in STATES], fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[2].set_ylim(0, 1.1)
    fig.suptitle(f"recover {len(done)} {res['method']} edits: editing back leaves the model changed, pop() does not",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def cmd_recover(args: argparse.Namespace) -> int:
    from editwrap.evals.datasets import load_dataset

    from ..cli import _load_model, _parse_hparams

    model = _load_model(args)
    facts = list(load_dataset(None, args.data))
    kl_prompts = unrelated_prompts(facts, args.n, args.n_kl)
    res = recover_study(model, facts[:args.n], args.method, _parse_hparams(args.hparam), kl_prompts=kl_prompts,
                        back_to=args.back_to)
    res["data"] = args.data
    res["kl_prompts_from"] = f"locality probes of records {args.n}+ of {args.data} (not edited)"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "recover.json", res)
    png = write_png(plot_recover, res, out / "recover.png")
    for s, v in res["summary"].items():
        print(f"{s}: {v}")
    print(f"{res['seconds']} s; wrote {out / 'recover.json'}" + (f" and {out / 'recover.png'}" if png else ""))
    return 0


def register(subparsers: Any, model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    from .cli import add_out

    p = subparsers.add_parser("recover", help="edit and recover: edit back to the original answer vs pop(), "
                                              "each compared with the unedited model")
    model_args(p)
    p.add_argument("--data", required=True, help="KnowEdit JSON file (the first --n records are edited)")
    p.add_argument("--n", type=int, default=50, help="facts to edit and recover (default 50)")
    p.add_argument("--n-kl", type=int, default=100, help="unrelated prompts for the KL (default 100)")
    p.add_argument("--method", default="rome")
    p.add_argument("--hparam", action="append", help="hyperparameter override: name=value (repeatable)")
    p.add_argument("--back-to", choices=("truth", "model"), default="truth",
                   help="edit-back target: the record's ground truth (default), or the unedited model's greedy answer")
    add_out(p, "results/analysis")
    p.set_defaults(func=cmd_recover)
