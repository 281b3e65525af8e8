"""Real questions, real queries and real probe lists for a generated trace.

`realize_trace` takes a trace (from `traces.generate`: arrivals, workflows, token counts,
synthetic probe lists) and a corpus, and rewrites what the corpus can make real:

- `question`: a question about a seeded-random article of the corpus, from templates on its
  title, description and topic ("Who was Albert Camus?", "Where is Dakar?", "What is
  Integral, the operation in calculus?"), or, with a FlashRAG dataset, the dataset's
  questions in file order (cycled when the trace has more requests), their golden answers
  as the line's `answers` (what the real body scores its answers against);
- each retrieve stage's `query`, following the workflow's shape: the first retrieval of a
  request searches the question, unless a `hypothesis` generation precedes it (HyDE), which
  searches a hypothetical document (the question followed by the article's title and
  description, or by the golden answers of a dataset question); every later retrieval of
  the request (IRG, multistep) searches the question followed by the text of the top passage
  that the request's previous retrieval really finds (same nprobe, searched in its lists),
  skipping passages an earlier query of the request already carried: an iterative workflow
  moves on to new text (IRG's next query is its new sentence), so successive queries of one
  request differ instead of repeating once the search converges;
- sub-question follow-ups (a dataset with decompositions, `--dataset fanoutqa`): the n-th
  retrieval after a request's first searches the question's n-th sub-question, as written by
  the dataset's annotators (`Question.follow_ups`: the query a decomposing workflow such as
  multistep would have its model write); once a request has used all its sub-questions, the
  rule above takes over;
- `answers`: a dataset question's gold answers (none for template questions);
- `synthesis.profile` of a request whose synthesis is chosen at run time (the `metis`
  workflow) asking a question with a decomposition (FanOutQA): METIS's profile derived from
  the dataset's own annotations (`traces.metis.profile_from_decomposition`: pieces = its
  sub-questions), source "fanoutqa-decomposition", in place of the one drawn from the
  declared profile model; its quality table, drawn by the quality model for the drawn
  question's hidden needs, does not describe this question and is dropped (a real question's
  quality is its answers' F1 on the real body; a simulation of it reports none);
- `synthesis.answer_tokens` of such a request asking a question with gold answers: from the
  gold answers (`traces.metis.gold_answer_tokens`: the longest one's words x 1.3, x 2.5, in
  16-256), `answer_source` "gold-answer", in place of the dataset shape's draw (METIS's
  SQuAD or Musique shapes' 8-12 tokens would cut FanOutQA's list answers after a few words);
- each retrieve stage's `clusters`: the index's coarse assignment of the embedded query,
  `index.quantizer.search(embed(query), nprobe)`, in coarse-quantizer order. The simulator
  thus replays the true list skew and the real backend searches exactly those lists;
- `index`: the corpus's index identity (`Corpus.index_identity`), on every line, so that
  `hedra sim` and `hedra run` refuse to replay the probe lists against another index;
- each retrieve stage's `truth` (`ragraph.graph.SearchTruth`): the best max(k, 20) ids of a
  FAISS `search_preassigned` of the embedded query in exactly its probe lists (`topk`: the
  first k, `top20`: the first 20), the list holding each top-k id (`hits`, from the index's
  inverted lists, `ivf.IdLists`), and, for a retrieval right after a generation, whether the
  query made of the first 25/50/75% of its words (`query_prefix`), embedded and searched in
  its own coarse probe list with the same nprobe, finds the same top-k in the same order.

Token counts (but a gold-answered synthesis's `answer_tokens`), arrivals and everything else
stay as the generator drew them. The same seed,
trace and corpus give the same output (the embedder runs the same batches).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.corpus import Corpus, CorpusError
from backends.ivf import IdLists
from ragraph.graph import PREFIX_FRACTIONS, query_prefix
from traces.metis import GOLD_ANSWER, gold_answer_tokens, profile_from_decomposition
from traces.questions import Question
from traces.schema import TOP_CACHE, TraceRequest

if TYPE_CHECKING:
    from backends.embedder import Embedder

SEED_STREAM = 4  # child 4 of SeedSequence(seed): the generator uses children 0-3
_ORDER = ("id", "arrival_s", "workflow", "iterations", "question", "answers", "dataset", "index", "stages")

_LIFESPAN = re.compile(r"\([^()]*\d[^()]*[–-]\s*(?:c\.\s*)?\d[^()]*\)")  # (1913–1960), (c. 1200 – 1270)
_BORN = re.compile(r"\((?:born|b\.)\s")
_PAREN = re.compile(r"^(.*\S)\s+\(([^()]+)\)$")

PERSON_PAST = ("Who was {t}?", "What is {t} known for?", "What did {t} do?", "Why is {t} remembered?")
PERSON_LIVING = ("Who is {t}?", "What is {t} known for?", "What has {t} done?")
PLACE = ("Where is {t}?", "What is {t}?", "What is {t} known for?", "Tell me about {t}.")
THING = ("What is {t}?", "What is {t} known for?", "Tell me about {t}.", "Can you explain {t}?")
THING_DESCRIBED = "What is {t}, the {d}?"


def question_for(title: str, description: str, topic: str, rng: np.random.Generator) -> str:
    """A natural question about an article, from its title, description and topic."""
    m = _PAREN.match(title)
    person = topic == "People" or bool(_LIFESPAN.search(description) or _BORN.search(description))
    if person:
        name = m.group(1) if m else title
        living = bool(_BORN.search(description)) or not _LIFESPAN.search(description)
        templates = PERSON_LIVING if living else PERSON_PAST
        return templates[int(rng.integers(len(templates)))].format(t=name)
    name = f"{m.group(1)} in {m.group(2)}" if m else title
    templates = PLACE if topic == "Geography" else THING
    desc = description.strip().rstrip(".")
    if topic != "Geography" and desc and len(desc.split()) <= 8:
        templates = (*templates, THING_DESCRIBED)
    choice = templates[int(rng.integers(len(templates)))]
    return choice.format(t=name, d=desc[:1].lower() + desc[1:])


@dataclass
class _Plan:
    row: dict
    question: str
    hint: str  # what a hypothetical document states beyond the question
    answers: tuple[str, ...] = ()  # the question's gold answers (a dataset's; none for generated questions)
    retrievals: list[tuple[int, str]] = field(default_factory=list)  # (stage index, "question"|"hyde"|"follow")
    follow_ups: tuple[str, ...] = ()  # the queries of the retrievals after the first (sub-questions), in order


def _rows(requests: Sequence[TraceRequest | dict]) -> list[dict]:
    rows = []
    for r in requests:
        if isinstance(r, TraceRequest):
            rows.append(r.model_dump(mode="json"))
        elif isinstance(r, dict):
            rows.append(json.loads(json.dumps(r)))  # a deep copy; the input stays as it was
        else:
            raise TypeError(f"expected TraceRequest or dict, got {type(r).__name__}")
    return rows


def _plan(row: dict, question: str, hint: str, nlist: int, answers: Sequence[str] = ()) -> _Plan:
    plan = _Plan(row, question, hint, tuple(answers))
    hypothesis = False
    stages = row.get("stages") or []
    for i, st in enumerate(stages):
        if st.get("op") == "generate":
            hypothesis = hypothesis or st.get("role") == "hypothesis"
            continue
        nprobe = st.get("nprobe")
        if not isinstance(nprobe, int) or not 1 <= nprobe <= nlist:
            raise CorpusError(f"request {row.get('id')}: field stages.{i}.nprobe: {nprobe} must be between 1 and"
                              f" the corpus index's nlist ({nlist})")
        kind = "follow" if plan.retrievals else ("hyde" if hypothesis else "question")
        plan.retrievals.append((i, kind))
    return plan


def realize_trace(requests: Sequence[TraceRequest | dict], corpus: Corpus, embedder: Embedder, *, seed: int = 0,
                  questions: Sequence[Question] | None = None, progress: bool = False) -> list:
    """The trace with real questions, queries and probe lists (see the module docstring).

    Returns the same kind of items it was given (TraceRequest objects or JSON-ready dicts);
    raises CorpusError for a stage whose nprobe exceeds the index's nlist, or an embedder
    whose dimension is not the index's."""
    if embedder.dim != corpus.dim:
        raise CorpusError(f"{corpus.path}: field embedder.dim: the index has {corpus.dim} dimensions,"
                          f" embedder {embedder.name} gives {embedder.dim}")
    if questions is not None and not questions:
        raise CorpusError("the question list is empty")
    rows = _rows(requests)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(SEED_STREAM + 1)[SEED_STREAM])
    arts = corpus.articles
    plans: list[_Plan] = []
    for i, row in enumerate(rows):
        if questions is not None:
            q = questions[i % len(questions)]
            plan = _plan(row, q.question, " ".join(q.golden_answers), corpus.nlist, q.golden_answers)
            plan.follow_ups = q.follow_ups
            plans.append(plan)
            continue
        j = int(rng.integers(len(arts)))
        title, desc, topic = (str(arts[c].iat[j]) for c in ("title", "description", "topic"))
        question = question_for(title, desc, topic, rng)
        hint = f"{title}: {(desc or topic or title).strip()}."
        plans.append(_plan(row, question, hint, corpus.nlist))

    index = corpus.index
    lists = IdLists(index)
    texts = corpus.passages["text"]
    previous_top: dict[int, int] = {}  # request -> top new passage of its latest retrieval (-1: none)
    used: dict[int, set[int]] = {i: set() for i in range(len(plans))}  # passages a request's queries carried
    rounds = max((len(p.retrievals) for p in plans), default=0)
    from tqdm import tqdm

    bar = tqdm(total=sum(len(p.retrievals) for p in plans), desc="realizing queries", unit="q",
               disable=not progress, leave=False)
    saved_nprobe = index.nprobe
    try:
        for r in range(rounds):
            active = [i for i, p in enumerate(plans) if len(p.retrievals) > r]
            queries = [_query(plans[i], r, previous_top.get(i, -1), texts) for i in active]
            stages = [plans[i].row["stages"][plans[i].retrievals[r][0]] for i in active]
            nprobes = [st["nprobe"] for st in stages]
            width = max(TOP_CACHE, r + 1, *(st["k"] for st in stages))  # r + 1: the next query's passage
            iq, found = search_in_probe_lists(index, embedder.encode(queries), nprobes, width)
            after_gen = [j for j, i in enumerate(active) if _follows_generation(plans[i], plans[i].retrievals[r][0])]
            prefixes = [query_prefix(queries[j], f) for j in after_gen for f in PREFIX_FRACTIONS]
            prefix_found = (search_in_probe_lists(index, embedder.encode(prefixes),
                                                  [nprobes[j] for j in after_gen for _ in PREFIX_FRACTIONS],
                                                  max(stages[j]["k"] for j in after_gen))[1]
                            if after_gen else [])
            same = {j: tuple(_ids(prefix_found[n * len(PREFIX_FRACTIONS) + m], stages[j]["k"])
                             == _ids(found[j], stages[j]["k"]) for m in range(len(PREFIX_FRACTIONS)))
                    for n, j in enumerate(after_gen)}
            for j, i in enumerate(active):
                stage = stages[j]
                stage["clusters"] = [int(c) for c in iq[j]]
                stage["query"] = queries[j]
                topk = _ids(found[j], stage["k"])
                stage["truth"] = {"topk": topk, "hits": [int(c) for c in lists.locate(topk)[0]],
                                  "top20": _ids(found[j], TOP_CACHE), "prefix_same": list(same.get(j, ()))}
                if len(plans[i].retrievals) > r + 1:  # the top new passage feeds the request's next query
                    pid = next((int(p) for p in found[j] if p >= 0 and int(p) not in used[i]), -1)
                    previous_top[i] = pid
                    used[i].add(pid)
            bar.update(len(active))
    finally:
        index.nprobe = saved_nprobe
        bar.close()

    out: list[Any] = []
    identity = corpus.index_identity
    for plan, original in zip(plans, requests, strict=True):
        row = plan.row
        row["question"] = plan.question
        if plan.answers:
            row["answers"] = list(plan.answers)
        else:
            row.pop("answers", None)  # answers belong to a question: a generated one replaces the trace's
        if plan.follow_ups and row.get("synthesis"):  # METIS's profile from the dataset's decomposition
            row["synthesis"]["profile"] = profile_from_decomposition(len(plan.follow_ups))
            row["synthesis"].pop("quality", None)
        if plan.answers and row.get("synthesis"):  # the final answer as long as the gold answers need
            syn: dict[str, Any] = {}
            for key, value in row["synthesis"].items():
                if key == "answer_tokens":  # its source right after it
                    syn.update(answer_tokens=gold_answer_tokens(plan.answers), answer_source=GOLD_ANSWER)
                elif key != "answer_source":
                    syn[key] = value
            row["synthesis"] = syn
        row["index"] = identity
        row = {**{k: row[k] for k in _ORDER if k in row}, **{k: v for k, v in row.items() if k not in _ORDER}}
        out.append(TraceRequest.model_validate_json(json.dumps(row)) if isinstance(original, TraceRequest) else row)
    return out


def search_in_probe_lists(index: Any, x: np.ndarray, nprobes: Sequence[int],
                          k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each query's probe list (`index.quantizer.search`, nearest first, `nprobes[i]` lists) and
    the ids of its best `k` in exactly those lists (FAISS `search_preassigned`; -1 pads a search
    that finds fewer), one batched call per distinct nprobe. Sets `index.nprobe`: the caller
    restores it."""
    probe: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(nprobes)
    found: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(nprobes)
    arr = np.asarray(nprobes)
    for nprobe in sorted(set(arr.tolist())):
        sel = np.flatnonzero(arr == nprobe)
        dq, iq = index.quantizer.search(x[sel], nprobe)
        index.nprobe = nprobe
        _, top = index.search_preassigned(x[sel], k, iq, dq)
        for j, pos in enumerate(sel):
            probe[pos], found[pos] = iq[j], top[j]
    return probe, found


def _ids(found: np.ndarray, k: int) -> list[int]:
    return [int(p) for p in found[:k] if p >= 0]


def _follows_generation(plan: _Plan, stage: int) -> bool:
    """Whether stage `stage` (a retrieval) comes right after a generation: its query could start
    on a prefix of that generation's text (speculative retrieval)."""
    return stage > 0 and plan.row["stages"][stage - 1].get("op") == "generate"


def _query(plan: _Plan, r: int, top: int, texts: Any) -> str:
    """The query of the request's r-th retrieval (see the module docstring); `top`: the passage the
    passage rule appends (-1: none)."""
    kind = plan.retrievals[r][1]
    if kind == "hyde":
        return f"{plan.question} {plan.hint}".strip()
    if kind == "follow" and r - 1 < len(plan.follow_ups):
        return plan.follow_ups[r - 1]
    if kind == "follow" and top >= 0:
        return f"{plan.question} {texts.iloc[top]}"
    return plan.question
