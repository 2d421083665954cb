"""Why a generated answer failed: the KnowEdit study's error types, decided by written rules.

The KnowEdit study sorts failed edits into four types: *meaningless tokens*, *missing tokens*,
*knowledge-irrelevant* answers and *partial token replacement*. It gives examples, not rules; these
are ours. They look at four strings, all compared as :func:`~editwrap.evals.generation.normalize_answer`
words: the generated **answer** (after the edit), the **target** of the edit, the **unedited**
model's generated answer to the same prompt and the **original** answer (the record's
``ground_truth`` when the dataset has one, else the unedited answer). Content words are the words
outside :data:`FUNCTION_WORDS`. The first rule that holds wins:

1. ``unchanged`` — the answer equals the unedited model's answer, empty answers included (the edit
   did not reach generation). The study counts these as knowledge-irrelevant; they are split out
   because the fix differs (a stronger edit, not a cleaner one).
2. ``meaningless`` — nothing readable: the answer normalises to no words; or under half of its
   non-space characters are letters or digits (symbol soup); or it degenerates into repetition (one
   word three times in a row, or one word making up at least half of four or more words).
3. ``target_late`` — every target word appears, in order and contiguous, but not at the start
   ("He studied at Harvard University" for "Harvard University"): the knowledge is there and the
   prefix rule fails it. Also outside the study's four; counted apart so it does not inflate them.
4. ``partial_replacement`` — the answer holds some of the target's content words *and* some content
   words of the original answer that the target lacks ("Karl Hanks" for original "Karl Marx",
   target "Tom Hanks"): old and new knowledge mixed.
5. ``missing`` — the answer holds some, not all, of the target's content words and none of the
   original's ("Tom" for "Tom Hanks"; "Bennington" for "Bennington College").
6. ``irrelevant`` — anything else: no target content word (including an answer that names another
   entity, or the original answer inside a longer text).

Successful answers (``success == 1``: the answer starts with the target) get no type.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from .generation import normalize_answer

__all__ = ["ERROR_TYPES", "SEED_TYPES", "FUNCTION_WORDS", "classify_error", "error_counts", "run_error_counts",
           "plot_error_histogram",
           "error_section"]

SEED_TYPES = ("meaningless", "missing", "irrelevant", "partial_replacement")
ERROR_TYPES = ("meaningless", "unchanged", "target_late", "partial_replacement", "missing", "irrelevant")
FUNCTION_WORDS = frozenset(
    "of in on at to for from by with and or is was are were be been it its this that as into he she they his her "
    "their who which what s".split())


def _content(words: Sequence[str]) -> set[str]:
    return {w for w in words if w not in FUNCTION_WORDS}


def _meaningless(raw: str, words: list[str]) -> bool:
    if not words:
        return True
    chars = [c for c in raw if not c.isspace()]
    if chars and sum(c.isalnum() for c in chars) < len(chars) / 2:
        return True
    if any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2)):
        return True
    return len(words) >= 4 and Counter(words).most_common(1)[0][1] * 2 >= len(words)


def _contains(words: list[str], part: list[str]) -> bool:
    n = len(part)
    return any(words[i:i + n] == part for i in range(len(words) - n + 1))


def classify_error(answer: str, target: str, original: str | None = None,
                   unedited: str | None = None) -> str | None:
    """The error type of one generated ``answer`` for ``target`` (None if it starts with the target).

    ``original``: the answer before the edit (dataset ground truth, else the unedited generation);
    ``unedited``: the unedited model's generation. Without them, ``unchanged`` and
    ``partial_replacement`` cannot be told apart from the other types.
    """
    words, tgt = normalize_answer(answer).split(), normalize_answer(target).split()
    if not tgt:
        raise ValueError("target normalises to no words: nothing to classify against (field 'target')")
    if words[:len(tgt)] == tgt:
        return None
    if unedited is not None and words == normalize_answer(unedited).split():
        return "unchanged"
    if _meaningless(answer, words):
        return "meaningless"
    orig = normalize_answer(original or "").split()
    if _contains(words, tgt):
        return "target_late"
    hit_t = _content(words) & _content(tgt)
    hit_o = _content(words) & (_content(orig) - _content(tgt))
    if hit_t and hit_o:
        return "partial_replacement"
    if hit_t:
        return "missing"
    return "irrelevant"


def _rewrite(line: Mapping[str, Any]) -> tuple[str, str | None, str | None] | None:
    """(answer, original, unedited) of a JSONL line's rewrite prompt, or None without a generated answer."""
    gen = (line.get("post") or {}).get("generation")
    gen = gen.get("rewrite") if isinstance(gen, dict) else None  # Sanitation lines keep a plain string
    if not isinstance(gen, dict) or not gen.get("answer"):
        return None
    pre = (gen.get("answer_pre") or [None])[0]
    return gen["answer"][0], line.get("ground_truth") or pre, pre


def error_counts(lines: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``{type: count}`` over the failed rewrite answers of result lines (plus ``ok`` and ``n``)."""
    out = dict.fromkeys(("n", "ok", *ERROR_TYPES), 0)
    for line in lines:
        got = _rewrite(line)
        if got is None or not normalize_answer(line.get("target_new") or ""):
            continue
        answer, original, unedited = got
        kind = classify_error(answer, line["target_new"], original, unedited)
        out["n"] += 1
        out["ok" if kind is None else kind] += 1
    return out


def run_error_counts(run: Mapping[str, Any]) -> dict[str, int] | None:
    """Error counts of a run summary's JSONL (single/batch lines, or a sequential run's last
    checkpoint); None when it has no generated answers."""
    import re

    from .resultlog import read_result_lines

    if not run.get("_file"):
        return None
    stem = re.sub(r"\.(summary|meta)\.json$", "", run["_file"])
    seq = run.get("mode") == "sequential"
    done = read_result_lines(f"{stem}.jsonl", ("checkpoint", "index") if seq else ("index",))[0]
    lines = list(done.values())
    if seq and lines:
        last = max(x.get("checkpoint", 0) for x in lines)
        lines = [x for x in lines if x.get("checkpoint") == last]
    counts = error_counts(lines)
    return counts if counts["n"] else None


def plot_error_histogram(rows: Mapping[str, Mapping[str, int]], path: Any, title: str = "") -> Any:
    """Grouped bars: share of failed answers per error type, one group per type, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rows)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(labels) * len(ERROR_TYPES) / 3), 4.2))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        c = rows[label]
        failed = max(1, c["n"] - c["ok"])
        ax.bar([i + j * width for i in range(len(ERROR_TYPES))], [100 * c[t] / failed for t in ERROR_TYPES],
               width, label=f"{label} ({c['n'] - c['ok']} failed)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ERROR_TYPES))], [t.replace("_", " ") for t in ERROR_TYPES])
    ax.set_ylabel("% of failed generated answers")
    ax.set_title(title or "Why generated answers fail")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def error_section(runs: Sequence[Mapping[str, Any]], out: Any, labels: Sequence[str], plot: bool = True) -> str:
    """Markdown: per run, how many rewrite answers succeeded and why the others failed, plus one
    histogram PNG per dataset (``errors-<dataset>.png`` in ``out``, written when ``plot``); "" when
    no run generated."""
    from pathlib import Path

    rows: dict[str, list[tuple[str, dict[str, int]]]] = {}
    for run, label in zip(runs, labels):
        c = run_error_counts(run)
        if c is not None:
            rows.setdefault(run["dataset"], []).append((f"{label} ({run['mode']})", c))
    if not rows:
        return ""
    lines = ["Rules: `editwrap.evals.errors` (docs/generation_metrics.md). Counts of rewrite prompts; "
             "the first four types are the KnowEdit study's, *unchanged* and *target late* are split out of them.", ""]
    for ds, rs in sorted(rows.items()):
        lines += [f"### {ds}", "", "| run | n | ok | " + " | ".join(t.replace("_", " ") for t in ERROR_TYPES) + " |",
                  "|---" * (3 + len(ERROR_TYPES)) + "|"]
        lines += [f"| {lab} | {c['n']} | {c['ok']} | " + " | ".join(str(c[t]) for t in ERROR_TYPES) + " |"
                  for lab, c in rs]
        png = Path(out) / f"errors-{ds}.png"
        if plot:
            plot_error_histogram(dict(rs), png, f"{ds}: why generated answers fail")
        lines += ["", f"![{ds} error types]({png.name})", ""]
    return "\n".join(lines)
