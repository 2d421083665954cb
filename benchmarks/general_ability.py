"""KnowEdit's general-ability protocol on the embedded model: does editing hurt general ability?

For each method: 5 consecutive WikiData_recent edits, then the offline lm-eval tasks packaged with
editwrap (MMLU dev, CounterFact true-vs-new MC, CounterFact true-fact completion, TriviaQA),
compared with one shared unedited run; the edits are popped and the weights checked bit-exact.

    python benchmarks/general_ability.py --limit 50 [--methods m1,m2] [--out DIR]

Equivalent to ``editwrap lm-eval --preset knowedit-general ...``. Results: DIR/table.md and
DIR/results.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", default="50")
    p.add_argument("--methods", default=None, help="comma-separated (default: the general-ability suite, "
                                                   "editwrap methods --suite general-ability)")
    p.add_argument("--n-edits", default="5")
    p.add_argument("--tasks", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--out", default="benchmarks/results/general_ability")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from editwrap.cli import main as cli

    args = ["lm-eval", "--preset", "knowedit-general", *(["--methods", a.methods] if a.methods else []),
            "--n-edits", a.n_edits, "--limit", a.limit, "--out", str(out / "results.json"), "--markdown",
            str(out / "table.md")]
    args += ["--tasks", a.tasks] if a.tasks else []
    args += ["--model", a.model] if a.model else []
    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
