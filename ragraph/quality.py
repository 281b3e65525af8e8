"""Answer quality: exact match and token F1 against gold answers, as SQuAD scores them.

The normalisation and both scores follow the official SQuAD v1.1 evaluation script
(Rajpurkar et al., 2016; `evaluate-v1.1.py`), which FlashRAG, HedraRAG's artifact and
RAGServe/METIS report too:
- normalise: lowercase; drop punctuation (`string.punctuation`); drop the articles
  a / an / the (whole words); collapse whitespace;
- exact match: 1.0 if the normalised prediction equals the normalised gold answer;
- token F1: over whitespace tokens of the normalised texts, the overlap is counted as a
  **multiset** (`collections.Counter` intersection, as the official script does: a token
  repeated twice in both counts twice, a token repeated in one only counts as often as in
  the other); precision = overlap / prediction tokens, recall = overlap / gold tokens;
  0 when there is no overlap (so an empty prediction scores 0);
- with several gold answers, each score is the maximum over them.

Pure functions: no I/O. A request without gold answers has no score (`None`), never 0;
`quality_summary` reports quality as absent (`None`) when no request has gold answers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 if the normalised texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Token F1 of the normalised texts, the overlap counted as a multiset (as SQuAD's script)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(prediction: str, golds: Sequence[str]) -> tuple[float, float] | None:
    """(F1, EM) of `prediction` against its best-matching gold answer; None without gold answers."""
    if not golds:
        return None
    return max(token_f1(prediction, g) for g in golds), max(exact_match(prediction, g) for g in golds)


def quality_summary(scored: Iterable[tuple[str, float | None, float | None]]) -> dict[str, object] | None:
    """Aggregate (answer, f1, em) per request into `summary.json`'s `quality`, or None when no
    request has a score (no gold answers: quality is absent, not zero).

    `scored`: one triple per request; f1/em are None for a request without gold answers (or
    without an answer, e.g. a failed one). `answered` counts requests with a non-empty answer
    among those scored."""
    rows = [(a, f, e) for a, f, e in scored if f is not None and e is not None]
    if not rows:
        return None
    f1s = sorted(f for _, f, _ in rows)
    n = len(rows)

    def quantile(q: float) -> float:
        return f1s[min(n - 1, int(q * n))]

    return {"scored": n, "answered": sum(1 for a, _, _ in rows if a.strip()),
            "f1_mean": sum(f1s) / n, "em_mean": sum(e for _, _, e in rows) / n,
            "f1_p50": quantile(0.5), "f1_zero": sum(1 for f in f1s if f == 0.0) / n,
            "f1_full": sum(1 for f in f1s if f == 1.0) / n}
