"""The registered methods as scripts read them: ``python -m editwrap.methods`` (or ``editwrap methods``).

    python -m editwrap.methods                           # a table of every method's self-description
    python -m editwrap.methods --names                   # rome,memit,... in table order
    python -m editwrap.methods --names --suite gpu-quant # the methods a benchmark suite runs
    python -m editwrap.methods --names --with artifact_field
    python -m editwrap.methods --fields name,artifact_field,records_field   # one tab-separated line each
    python -m editwrap.methods --json

Benchmark scripts take their method lists from here, so a new method joins them from its own folder.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from .base import MethodBase, ordered_methods

__all__ = ["FIELDS", "describe", "select", "suite_names", "main", "add_arguments"]

#: the self-description attributes, in the order the table prints them
FIELDS = ("name", "display_name", "family", "rank", "needs_subject", "single_fact", "resolvable", "artifact_field",
          "records_field", "supports_quantized", "cli", "reference_row", "suites")


def describe(cls: type) -> dict[str, Any]:
    """A method's self-description as JSON data (``knowedit_reference`` included)."""
    out = {f: getattr(cls, f, getattr(MethodBase, f, None)) for f in FIELDS}
    out["suites"] = list(out["suites"])
    out["hparams"] = cls.Hparams.__name__
    out["knowedit_reference"] = {ds: dict(v) for ds, v in cls.knowedit_reference.items()}
    return out


def select(suite: str | None = None, with_: Sequence[str] = (), without: Sequence[str] = (),
           only: Sequence[str] | None = None) -> list[type]:
    """Method classes in table order: in ``suite``, with every attribute of ``with_`` set (truthy),
    none of ``without``, and (``only``) among the given names."""
    out = []
    for cls in ordered_methods():
        if suite is not None and suite not in cls.suites:
            continue
        if any(not getattr(cls, f) for f in with_) or any(getattr(cls, f) for f in without):
            continue
        if only is not None and cls.name not in only:
            continue
        out.append(cls)
    return out


def suite_names(suite: str) -> str:
    """The methods of a benchmark suite, comma-separated in table order: a script's default ``--methods``."""
    return ",".join(c.name for c in select(suite=suite))


def _field(name: str) -> str:
    if not hasattr(MethodBase, name) or name.startswith("_"):
        raise argparse.ArgumentTypeError(f"{name!r} is not a method attribute; choose from {', '.join(FIELDS)}, "
                                         "knowedit_reference")
    return name


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "-"
    if isinstance(v, (tuple, list)):
        return ",".join(map(str, v)) or "-"
    return "-" if v is None or v == "" else str(v)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--names", action="store_true", help="print the names only, comma-separated")
    p.add_argument("--fields", default=None, help="print these attributes, one tab-separated line per method "
                                                  "('-' for none)")
    p.add_argument("--json", action="store_true", help="print every attribute as JSON")
    p.add_argument("--suite", default=None, help="only the methods a benchmark suite runs (their `suites`)")
    p.add_argument("--with", dest="with_", action="append", default=[], type=_field, metavar="ATTR",
                   help="only methods with this attribute set (repeatable), e.g. artifact_field")
    p.add_argument("--without", action="append", default=[], type=_field, metavar="ATTR",
                   help="only methods without this attribute set (repeatable)")
    p.add_argument("--only", default=None, help="only these methods (comma-separated names; unknown ones are errors)")


def run(args: argparse.Namespace) -> int:
    only = None
    if args.only:
        from .base import method_class

        only = [method_class(n).name for n in args.only.replace(" ", ",").split(",") if n]
    chosen = select(args.suite, args.with_, args.without, only)
    if args.names:
        print(",".join(c.name for c in chosen))
    elif args.fields:
        fields = [_field(f) for f in args.fields.split(",")]
        for c in chosen:
            print("\t".join(_cell(getattr(c, f)) for f in fields))
    elif args.json:
        print(json.dumps([describe(c) for c in chosen], indent=1))
    else:
        rows = [[_cell(getattr(c, f)) for f in FIELDS] for c in chosen]
        widths = [max(len(f), *(len(r[i]) for r in rows)) for i, f in enumerate(FIELDS)] if rows else []
        for r in [list(FIELDS), *rows]:
            print("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m editwrap.methods", description=__doc__.splitlines()[0])
    add_arguments(p)
    try:
        return run(p.parse_args(argv))
    except ValueError as e:
        print(f"editwrap.methods: error: {e}", file=sys.stderr)
        return 2
