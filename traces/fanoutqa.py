"""FanOutQA's dev set: real multi-hop questions, gold answers and human decompositions.

FanOutQA (Zhu et al., "FanOutQA: A Multi-Hop, Multi-Document Question Answering Benchmark for
Large Language Models", ACL 2024) asks questions whose answer needs many Wikipedia pages
("What is the batting hand of each of the first five picks in the 1998 MLB draft?"); each
question comes with a human-written decomposition into sub-questions, each with its own
answer and the Wikipedia page that answers it. The PyPI package `fanoutqa` (1.1.1, MIT; data
CC BY-SA 4.0) ships the dev set as `fanoutqa/data/fanout-final-dev.json`: 310 questions.

Hedra reads that file only: the package's code imports spaCy and httpx (for its evaluation and
its live Wikipedia fetches), which nothing here needs, so the file is found with
`importlib.util.find_spec` (which does not run the package) and validated with the schema
below. `pip install --no-deps fanoutqa==1.1.1` is enough.

What a trace takes from a question (`traces.questions.Question`):
- `question`: the top-level question (whitespace collapsed);
- `golden_answers`: one string, the answer written as FanOutQA's own `str_answer` writes it
  for its string metrics (`fanoutqa/eval/utils.py`): a list one item per line, a dict one
  `key - value` per line, a bool `yes`/`no`;
- `follow_ups`: the sub-questions in pre-order (a sub-question, then its own decomposition),
  which `realize_trace` uses as the queries of a request's retrievals after the first.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError

from traces.questions import DatasetError, Question

DEV_FILE = "data/fanout-final-dev.json"  # inside the installed package folder
INSTALL = "pip install --no-deps fanoutqa==1.1.1"

Primitive = StrictBool | StrictInt | StrictFloat | StrictStr
Answer = Primitive | list[Primitive] | dict[str, Primitive]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Evidence(_Model):
    """The Wikipedia page an annotator answered a sub-question from."""

    pageid: StrictInt
    revid: StrictInt
    title: StrictStr
    url: StrictStr


class SubQuestion(_Model):
    """One step of a decomposition; `evidence` is None where it has a decomposition of its own."""

    id: StrictStr
    question: StrictStr
    decomposition: list[SubQuestion]
    answer: Answer
    depends_on: list[StrictStr]
    evidence: Evidence | None


class DevQuestion(_Model):
    """A top-level question of the dev set."""

    id: StrictStr
    question: StrictStr
    decomposition: list[SubQuestion]
    answer: Answer
    categories: list[StrictStr]

    def sub_questions(self) -> list[SubQuestion]:
        """Every sub-question, in pre-order."""
        out: list[SubQuestion] = []
        stack = list(reversed(self.decomposition))
        while stack:
            sq = stack.pop()
            out.append(sq)
            stack.extend(reversed(sq.decomposition))
        return out


_FILE = TypeAdapter(list[DevQuestion])


def answer_text(answer: Answer) -> str:
    """The answer as one string, as FanOutQA's `str_answer` writes it."""
    if isinstance(answer, list):
        return "\n".join(answer_text(a) for a in answer)
    if isinstance(answer, dict):
        return "\n".join(f"{k} - {answer_text(v)}" for k, v in answer.items())
    if isinstance(answer, bool):
        return "yes" if answer else "no"
    return str(answer)


def dev_file() -> Path:
    """The installed package's dev-set file; DatasetError (with the install command) if absent."""
    spec = importlib.util.find_spec("fanoutqa")  # locates the package without running its __init__
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / DEV_FILE
        if path.is_file():
            return path
    if not folders:
        raise DatasetError(f"dataset fanoutqa: the fanoutqa package is not installed; install it: {INSTALL}")
    raise DatasetError(f"dataset fanoutqa: the installed fanoutqa package has no {DEV_FILE}; reinstall it: {INSTALL}")


def read_fanoutqa(path: str | Path | None = None) -> list[DevQuestion]:
    """The questions of a FanOutQA dev-format JSON file (default: the installed package's), validated;
    DatasetError naming the file, the question's position and the field."""
    path = Path(path) if path is not None else dev_file()
    try:
        raw = json.loads(path.read_bytes())
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise DatasetError(f"{path}: not JSON ({getattr(exc, 'msg', exc)})") from None
    try:
        questions = _FILE.validate_python(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        where = f"question {loc[0]}" + (f" field {'.'.join(str(p) for p in loc[1:])}" if len(loc) > 1 else "")
        raise DatasetError(f"{path}: {where if loc else 'field (file)'}: {err['msg']}") from None
    if not questions:
        raise DatasetError(f"{path}: no questions")
    seen: set[str] = set()
    for i, q in enumerate(questions):
        if not q.question.strip():
            raise DatasetError(f"{path}: question {i} field question: empty")
        if q.id in seen:
            raise DatasetError(f"{path}: question {i} field id: duplicate id {q.id!r}")
        seen.add(q.id)
    return questions


def load_fanoutqa(path: str | Path | None = None) -> list[Question]:
    """FanOutQA's questions (file order) as trace questions: text, gold answer, sub-questions."""
    return [Question(q.id, " ".join(q.question.split()), (answer_text(q.answer),),
                     tuple(" ".join(s.question.split()) for s in q.sub_questions() if s.question.strip()))
            for q in read_fanoutqa(path)]
