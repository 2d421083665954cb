"""TF-IDF cosine similarity with scikit-learn ``TfidfVectorizer``'s default settings, without scikit-learn.

ROME/MEMIT score generation *consistency* as the cosine between the TF-IDF vectors of the generated
text and of reference texts (``tfidf_similarity`` in ``experiments/py/eval_utils_counterfact.py``),
using a vectorizer whose vocabulary and IDF come from Wikipedia snippets (``idf.npy`` +
``tfidf_vocab.json``, or a ``TfidfVectorizer().fit`` on ``attribute_snippets.json`` when those
cannot be downloaded). The defaults reproduced here: lowercase, tokens = runs of 2+ word characters
(``(?u)\\b\\w\\w+\\b``), raw term counts, smooth IDF ``ln((1 + n) / (1 + df)) + 1``, L2-normalised
vectors; words outside the vocabulary are ignored.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

__all__ = ["Tfidf"]

_TOKEN = re.compile(r"(?u)\b\w\w+\b")


class Tfidf:
    """A fitted vocabulary (word -> column) and its IDF weights."""

    def __init__(self, vocab: Mapping[str, int], idf: Sequence[float]):
        if len(idf) < len(vocab) or any(not 0 <= i < len(idf) for i in vocab.values()):
            raise ValueError(f"the vocabulary's columns must index the {len(idf)} IDF weights")
        self.vocab, self.idf = dict(vocab), [float(x) for x in idf]

    @staticmethod
    def words(text: str) -> list[str]:
        return _TOKEN.findall(text.lower())

    @classmethod
    def fit(cls, documents: Iterable[str]) -> "Tfidf":
        """``TfidfVectorizer().fit(documents)``: columns in sorted word order, smooth IDF."""
        df: Counter[str] = Counter()
        n = 0
        for doc in documents:
            df.update(set(cls.words(doc)))
            n += 1
        vocab = {w: i for i, w in enumerate(sorted(df))}
        return cls(vocab, [math.log((1 + n) / (1 + df[w])) + 1 for w in sorted(df)])

    @classmethod
    def load(cls, idf_path: str | Path, vocab_path: str | Path) -> "Tfidf":
        """The reference's cached statistics: ``idf.npy`` (a float array, read without pickle) and
        ``tfidf_vocab.json`` (word -> column)."""
        import numpy as np

        idf = np.load(idf_path, allow_pickle=False)
        vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        return cls(vocab, idf.astype(float).tolist())

    def vector(self, text: str) -> dict[int, float]:
        """The L2-normalised TF-IDF vector of ``text`` as {column: weight} (empty: no known word)."""
        counts = Counter(self.vocab[w] for w in self.words(text) if w in self.vocab)
        vec = {j: c * self.idf[j] for j, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in vec.values()))
        return {j: v / norm for j, v in vec.items()} if norm > 0 else {}

    def similarity(self, a: str, b: str) -> float:
        """Cosine of the two texts' vectors; NaN when either has no word of the vocabulary (the
        reference divides by a zero norm there)."""
        va, vb = self.vector(a), self.vector(b)
        if not va or not vb:
            return math.nan
        return sum(v * vb.get(j, 0.0) for j, v in va.items())
