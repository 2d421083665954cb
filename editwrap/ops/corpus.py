"""Text sources for covariance statistics.

The references use ~100k Wikipedia samples, which cannot be downloaded here. The default is
English prose that ships with every CPython (``pydoc_data.topics``: the language reference,
~65k words). Any iterable of strings, a local ``.txt``/``.json``/``.jsonl`` file (WikiBio records
of KnowEdit are Wikipedia prose: their ``text`` fields are used; MEND zsRE records give their
unrelated ``loc`` question and answer) or a ``datasets`` dataset works.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = ["DEFAULT_CORPUS", "iter_corpus", "corpus_id"]

DEFAULT_CORPUS = "pydoc"


def _pydoc_paragraphs() -> Iterator[str]:
    import pydoc_data.topics as topics

    for key in sorted(topics.topics):
        for para in topics.topics[key].split("\n\n"):
            para = " ".join(para.split())
            if len(para.split()) >= 8:  # skip headings and code fragments
                yield para


def _file_texts(path: Path) -> Iterator[str]:
    if path.suffix in (".json", ".jsonl"):
        raw = path.read_text(encoding="utf-8")
        rows: Any = [json.loads(x) for x in raw.splitlines() if x.strip()] if path.suffix == ".jsonl" \
            else json.loads(raw)
        for r in rows if isinstance(rows, list) else [rows]:
            if isinstance(r, str):
                yield r
            elif isinstance(r, dict):
                k = next((k for k in ("text", "content", "prompt") if isinstance(r.get(k), str)), None)
                if k is not None:
                    yield r[k]
                elif isinstance(r.get("loc"), str):  # MEND zsRE records: their unrelated NQ question
                    yield f"{r['loc']} {r['loc_ans']}" if isinstance(r.get("loc_ans"), str) else r["loc"]
    else:
        for para in path.read_text(encoding="utf-8").split("\n\n"):
            if para.strip():
                yield " ".join(para.split())


def iter_corpus(corpus: str | Path | Iterable[str] | None) -> Iterator[str]:
    """Yield text passages from a corpus spec (see module docstring)."""
    if corpus is None or corpus == DEFAULT_CORPUS:
        yield from _pydoc_paragraphs()
    elif isinstance(corpus, (str, Path)):
        p = Path(corpus)
        if not p.exists():
            raise FileNotFoundError(f"corpus file {p} does not exist; pass an existing text/JSON file, "
                                    f"an iterable of strings, or '{DEFAULT_CORPUS}'")
        yield from _file_texts(p)
    else:
        for item in corpus:
            yield item["text"] if isinstance(item, dict) else str(item)


def corpus_id(corpus: str | Path | Iterable[str] | None) -> str:
    """A stable name for the cache key: the builtin name, or a hash of a file's bytes."""
    if corpus is None or corpus == DEFAULT_CORPUS:
        return DEFAULT_CORPUS
    if isinstance(corpus, (str, Path)):
        p = Path(corpus)
        return f"{p.stem}-{hashlib.sha256(p.read_bytes()).hexdigest()[:10]}"
    return "custom-" + hashlib.sha256(repr(corpus).encode()).hexdigest()[:10]
