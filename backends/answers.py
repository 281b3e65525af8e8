"""Real text through a replay: prompts from the request, answers from the model, follow-up queries from them.

On the real body with a model that answers (one with a chat template, `backends.models.
answers_text`, e.g. smollm2) and a trace that carries questions, an `AnswerFlow` rides along
the replay (the executor calls it under the scheduler's lock):

- `prompts(step, sched)`: chat messages for each Generate task an engine step admits, built
  from the request's question, the passages its latest retrieval found so far (the Retrieve
  node's running top-k, as the core holds it: final for a normal generation, partial for a
  speculative one, which is HedraRAG's speculative generation on real text) and the text
  of its previous generation (IRG's and multistep's notes). The engine renders them with
  the model's chat template and reports each finished sequence's text;
- `record(result)`: keeps that text per node (a speculative run aborted and redone is
  overwritten by the redo);
- `queries(batch)`: the query of a retrieval that follows a generation is the question plus
  the latest generation's text, as IRG (Shao et al., 2023: Iter-RetGen) and FLARE (Jiang et
  al., 2023) build it from what the model wrote; the retrieval body embeds that text and
  searches the real index, so the search outcome is the real one. Retrievals before any
  generation keep the trace's query. A speculative retrieval (HedraRAG's, started while the
  generation before it is still running) searches the question plus the text that generation
  has written so far (each engine step reports it, `GenStepResult.partial_texts`), so its
  accuracy is that of real partial generations;
- `scored(records)`: each completed request's answer and, where the trace has gold answers,
  its token F1 and exact match (`ragraph.quality`). Failed requests are not scored.

Fan-out synthesis (RAGServe / METIS, arXiv 2412.10543; `ragraph.synthesis.expand`): the core
appends a configured request's synthesis nodes at run time, so prompts read the node from the
scheduler's run (its spec, dependencies and `config`), not the trace's request, and each role
gets METIS's prompt:

- `map` (map_reduce): its one chunk, passage i of the retrieval's top-k for the i-th map of the
  fan-out, asked to summarise what it says about the question in at most `intermediate_length`
  words (the configuration's; a fixed workflow's from the map's output tokens);
- `reduce`: every map's summary (its dependencies, in chunk order) and the question, to answer;
- `rerank` (map_rerank): its one chunk, to answer and end with "Score: N" (0-100); the request's
  answer is the best-scored one (`parse_rerank`; ties and unscored answers go to the better
  retrieved chunk);
- a configured `stuff`: all `num_chunks` chunks in one prompt;
- `profile` (METIS's profiler call): the question alone, answered with the profile as JSON; its
  text is neither a retrieval's query nor a later prompt's notes, nor the answer.

The request's answer is then the best rerank answer, else the text of its last `answer` or
`reduce` generation, else of its last generation (`answer`).

Token counts: a text-prompted task's prompt is the real text (its length, not the trace's),
and its decode ends at the model's end of turn (at most the trace's `output_tokens`); the
records' token columns stay the trace's.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ragraph.graph import Generate, NodeKey, NodeSpec, Request, Retrieve
from ragraph.quality import score
from ragraph.records import RequestRecord
from ragraph.synthesis import TOKENS_PER_WORD, Method, SynthesisConfig
from ragraph.work import GenStep, GenStepResult, SearchBatch

if TYPE_CHECKING:
    from ragraph.core import Scheduler

PASSAGES_PER_PROMPT = 3  # the best passages of a retrieval put into a prompt
PASSAGE_CHARS = 700  # each cut to this many characters (a 135M model reads ~1,000 prompt tokens/s on a core)

_INSTRUCTIONS = {
    "hypothesis": "Write a short passage (two sentences) that answers the question.",
    "compress": "Summarise in two sentences what the passages say about the question.",
    "reason": "In one sentence, say what is still needed to answer the question.",
    "profile": ("Profile the question for retrieval-augmented answering. Reply with JSON only: "
                '{"complexity": "high" or "low", "joint_reasoning": true or false, '
                '"pieces_of_information": 1-10, "summary_length": [min words, max words]}.'),
}
_ANSWER = "Answer the question in a few words, using the passages."
_MAP = "Summarise in at most {words} words what the passage says about the question."
_REDUCE = "Answer the question in a few words, using the notes (one per passage)."
_RERANK = ("Answer the question in a few words, using the passage. Then, on a new line, write"
           " \"Score: N\", with N from 0 to 100: how well the passage answers the question.")
_SCORE = re.compile(r"\bscore\s*[:=]?\s*(\d{1,3}(?:\.\d+)?)", re.IGNORECASE)
_LABEL = re.compile(r"^\s*answer\s*:\s*", re.IGNORECASE)
_FINAL_ROLES = ("answer", "reduce")  # a generation whose text is the request's answer

Messages = list[dict[str, str]]
_Graph = tuple[tuple[NodeSpec, ...], tuple[tuple[int, ...], ...], int]  # specs, deps, fixed nodes


def parse_rerank(text: str) -> tuple[str, float | None]:
    """A map_rerank generation's (answer, score): the score is the last "Score: N" (None: none);
    the answer is the text without it (and without a leading "Answer:")."""
    found = list(_SCORE.finditer(text))
    if not found:
        return _LABEL.sub("", text).strip(), None
    last = found[-1]
    answer = (text[: last.start()] + text[last.end():]).strip()
    return _LABEL.sub("", answer).strip(), float(last.group(1))


class AnswerFlow:
    """The text of one replay's generations and the queries made from them (see the module docstring)."""

    def __init__(self, requests: Sequence[Request], passage: Callable[[int], str], *,
                 passages_per_prompt: int = PASSAGES_PER_PROMPT, passage_chars: int = PASSAGE_CHARS) -> None:
        self._requests = {r.id: r for r in requests}
        self._passage = passage
        self._per_prompt, self._chars = passages_per_prompt, passage_chars
        self._texts: dict[NodeKey, str] = {}  # finished generations' text
        self._partial: dict[NodeKey, str] = {}  # running generations' text so far
        self._graphs: dict[str, _Graph] = {}  # a configured request's graph, as the core grew it
        self._configs: dict[str, SynthesisConfig] = {}
        self._lock = threading.Lock()

    # --- called by the executor ------------------------------------------------------------

    def prompts(self, step: GenStep, sched: Scheduler) -> dict[NodeKey, Messages] | None:
        """Chat messages of the tasks `step` admits whose request has a question (None: none)."""
        out = {}
        for task in step.admit:
            request = self._requests.get(task.key[0])
            run = sched.requests.get(task.key[0])
            if request is None or run is None or not request.question:
                continue
            if len(run.nodes) > len(request.nodes):  # the core appended a synthesis: keep its shape
                self._graphs[request.id] = (tuple(n.spec for n in run.nodes), tuple(run.deps), len(request.nodes))
                if run.config is not None:
                    self._configs[request.id] = run.config
            out[task.key] = self._messages(request, task.key[1], lambda i, run=run: run.nodes[i].topk)
        return out or None
    def record(self, result: GenStepResult) -> None:
        with self._lock:
            self._partial.update(result.partial_texts)
            self._texts.update(result.texts)

    def queries(self, batch: SearchBatch) -> dict[NodeKey, str] | None:
        """Query texts of the batch's first sub-stages that follow a generation (None: none)."""
        out = {}
        for task in batch.tasks:
            if task.first:
                text = self.query(task.key)
                if text:
                    out[task.key] = text
        return out or None

    def query(self, key: NodeKey) -> str:
        """The query of Retrieve node `key`: question + the latest earlier generation's text,
        or what it has written so far while it runs (a speculative retrieval); "" where no
        generation precedes it (a profile does not count) or it has no text yet: the trace's
        query stands."""
        request = self._requests.get(key[0])
        if request is None:
            return ""
        gen = self._latest(request.nodes, key[1], Generate)
        text = ""
        if gen is not None:
            with self._lock:
                text = self._texts.get((request.id, gen)) or self._partial.get((request.id, gen), "")
        return f"{request.question} {text}".strip() if text else ""

    def text(self, key: NodeKey) -> str:
        with self._lock:
            return self._texts.get(key, "")

    def answer(self, request: Request) -> str:
        """The request's answer: its best-scored rerank answer, else the text of its last `answer`
        or `reduce` generation, else of its last generation (a profile is never the answer)."""
        specs = self._graphs[request.id][0] if request.id in self._graphs else request.nodes
        gens = [i for i, n in enumerate(specs) if isinstance(n, Generate) and n.role != "profile"]
        reranks = [i for i in gens if specs[i].role == "rerank"]  # type: ignore[union-attr]
        if reranks:
            return self._best_rerank(request.id, reranks)
        answers = [i for i in gens if specs[i].role in _FINAL_ROLES]  # type: ignore[union-attr]
        last = (answers or gens or [None])[-1]
        return self.text((request.id, last)) if last is not None else ""

    def _best_rerank(self, rid: str, nodes: Sequence[int]) -> str:
        """The answer of the best-scored rerank among `nodes` (in chunk order: ties and unscored
        answers go to the better retrieved chunk; an empty answer never wins over a non-empty one)."""
        best, best_key = "", (False, -1.0)
        for i in nodes:
            answer, value = parse_rerank(self.text((rid, i)))
            key = (bool(answer), -1.0 if value is None else value)
            if key > best_key:
                best, best_key = answer, key
        return best

    def scored(self, records: Sequence[RequestRecord]) -> list[RequestRecord]:
        """`records` with each completed request's answer, and its F1 / EM where it has gold answers."""
        out = []
        for rec in records:
            request = self._requests.get(rec.id)
            if rec.status != "completed" or request is None:
                out.append(rec)
                continue
            answer = self.answer(request)
            f1_em = score(answer, request.answers)
            out.append(replace(rec, answer=answer, f1=f1_em[0] if f1_em else None, em=f1_em[1] if f1_em else None))
        return out

    # --- prompts -----------------------------------------------------------------------------

    def _messages(self, request: Request, index: int, topk: Callable[[int], Sequence[int]]) -> Messages:
        specs, deps, fixed = self._graphs.get(request.id, (request.nodes, request.deps, len(request.nodes)))
        node = specs[index]
        role = node.role if isinstance(node, Generate) else "answer"
        retrieval = self._latest(specs, index, Retrieve)
        found = [int(i) for i in topk(retrieval) if i >= 0] if retrieval is not None else []
        config = self._configs.get(request.id)
        if role == "profile":
            parts = [_INSTRUCTIONS["profile"]]
        elif role in ("map", "rerank"):
            position = self._position(specs, deps, index)
            chunk = found[position: position + 1]
            words = self._map_words(node, config, index >= fixed)
            parts = [_MAP.format(words=words) if role == "map" else _RERANK]
            if chunk:
                parts.append(f"Passage:\n{self._passage(chunk[0])[: self._chars]}")
        elif role == "reduce":
            notes = "\n".join(f"[{n}] {self.text((request.id, d)) or '(nothing)'}"
                              for n, d in enumerate(deps[index], 1))
            parts = [_REDUCE, f"Notes:\n{notes}"]
        else:
            parts = [_INSTRUCTIONS.get(role, _ANSWER)]
            stuff = config is not None and config.method is Method.STUFF and index >= fixed
            ids = found[: config.num_chunks] if stuff and config is not None else found[: self._per_prompt]
            if ids:
                passages = "\n".join(f"[{n}] {self._passage(pid)[: self._chars]}" for n, pid in enumerate(ids, 1))
                parts.append(f"Passages:\n{passages}")
            previous = self._latest(specs, index, Generate)
            notes = self.text((request.id, previous)) if previous is not None else ""
            if notes:
                parts.append(f"Notes so far: {notes}")
        parts.append(f"Question: {request.question}")
        return [{"role": "user", "content": "\n\n".join(parts)}]

    @staticmethod
    def _position(specs: Sequence[NodeSpec], deps: Sequence[tuple[int, ...]], index: int) -> int:
        """Node `index`'s place in its fan-out (0 for the first map): the chunk it reads. The
        fan-out's nodes are consecutive, with the same role and dependencies."""
        first = index
        while first > 0 and specs[first - 1].role == specs[index].role and deps[first - 1] == deps[index]:
            first -= 1
        return index - first

    @staticmethod
    def _map_words(node: NodeSpec, config: SynthesisConfig | None, configured: bool) -> int:
        """Words a map's summary may hold: the configuration's `intermediate_length`, or (a fixed
        workflow's map) what its output tokens hold."""
        if configured and config is not None and config.intermediate_length:
            return config.intermediate_length
        tokens = node.output_tokens if isinstance(node, Generate) else 0
        return max(1, int(tokens / TOKENS_PER_WORD))

    @staticmethod
    def _latest(specs: Sequence[NodeSpec], index: int, kind: type) -> int | None:
        """The nearest node of type `kind` before node `index` (a profile generation does not count)."""
        return next((i for i in range(index - 1, -1, -1) if isinstance(specs[i], kind)
                     and not (kind is Generate and specs[i].role == "profile")), None)
