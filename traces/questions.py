"""Questions a real trace asks, and the named datasets that ship them (`hedra trace gen --dataset`).

A `Question` is what `backends.real_trace.realize_trace` needs of a dataset question: its text,
its gold answers (written to each trace row as `answers`, for answer quality) and, for a
dataset with human decompositions (FanOutQA), the sub-questions that become the request's
follow-up queries. FlashRAG dataset files (`--questions`, `backends.corpus.load_flashrag_dataset`)
and the named datasets below both produce it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class DatasetError(ValueError):
    """A named dataset that is unknown, not installed or malformed; the message says what and how to fix it."""


@dataclass(frozen=True)
class Question:
    """One dataset question."""

    id: str
    question: str
    golden_answers: tuple[str, ...] = ()  # the gold answers (FlashRAG's name); a trace row's `answers`
    follow_ups: tuple[str, ...] = ()  # sub-questions, in order: the queries of the request's later retrievals


def _fanoutqa() -> list[Question]:
    from traces.fanoutqa import load_fanoutqa

    return load_fanoutqa()


NAMED_DATASETS: dict[str, Callable[[], list[Question]]] = {"fanoutqa": _fanoutqa}


def named_dataset(name: str) -> list[Question]:
    """The questions of a dataset known by name; DatasetError if the name is unknown or its package
    is missing (the message names the package and the install command)."""
    load = NAMED_DATASETS.get(name)
    if load is None:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(NAMED_DATASETS))}"
                           " (a FlashRAG dataset JSONL file goes with --questions)")
    return load()


def require_gold(questions: list[Question], source: str) -> list[Question]:
    """`questions` when at least one has gold answers; DatasetError naming `source` otherwise
    (answer quality was asked for and nothing could be scored: never a quality of zero)."""
    if not any(q.golden_answers for q in questions):
        raise DatasetError(f"{source}: no question has gold answers (golden_answers), so answer quality cannot be"
                           " measured; give each line a non-empty golden_answers list, or use --dataset fanoutqa")
    return questions
