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
- `scored(records)`: each completed request's answer (the text of its last `answer`
  generation, else its last generation) and, where the trace has gold answers, its token
  F1 and exact match (`ragraph.quality`). Failed requests are not scored.

Token counts: a text-prompted task's prompt is the real text (its length, not the trace's),
and its decode ends at the model's end of turn (at most the trace's `output_tokens`); the
records' token columns stay the trace's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ragraph.graph import Generate, NodeKey, Request, Retrieve
from ragraph.quality import score
from ragraph.records import RequestRecord
from ragraph.work import GenStep, GenStepResult, SearchBatch

if TYPE_CHECKING:
    from ragraph.core import Scheduler

PASSAGES_PER_PROMPT = 3  # the best passages of a retrieval put into a prompt
PASSAGE_CHARS = 700  # each cut to this many characters (a 135M model reads ~1,000 prompt tokens/s on a core)

_INSTRUCTIONS = {
    "hypothesis": "Write a short passage (two sentences) that answers the question.",
    "compress": "Summarise in two sentences what the passages say about the question.",
    "reason": "In one sentence, say what is still needed to answer the question.",
}
_ANSWER = "Answer the question in a few words, using the passages."

Messages = list[dict[str, str]]


class AnswerFlow:
    """The text of one replay's generations and the queries made from them (see the module docstring)."""

    def __init__(self, requests: Sequence[Request], passage: Callable[[int], str], *,
                 passages_per_prompt: int = PASSAGES_PER_PROMPT, passage_chars: int = PASSAGE_CHARS) -> None:
        self._requests = {r.id: r for r in requests}
        self._passage = passage
        self._per_prompt, self._chars = passages_per_prompt, passage_chars
        self._texts: dict[NodeKey, str] = {}  # finished generations' text
        self._partial: dict[NodeKey, str] = {}  # running generations' text so far
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
        generation precedes it or it has no text yet: the trace's query stands."""
        request = self._requests.get(key[0])
        if request is None:
            return ""
        gen = self._latest(request, key[1], Generate)
        text = ""
        if gen is not None:
            with self._lock:
                text = self._texts.get((request.id, gen)) or self._partial.get((request.id, gen), "")
        return f"{request.question} {text}".strip() if text else ""

    def text(self, key: NodeKey) -> str:
        with self._lock:
            return self._texts.get(key, "")

    def answer(self, request: Request) -> str:
        """The request's answer: the text of its last `answer` generation, else of its last generation."""
        gens = [i for i, n in enumerate(request.nodes) if isinstance(n, Generate)]
        answers = [i for i in gens if request.nodes[i].role == "answer"]  # type: ignore[union-attr]
        last = (answers or gens or [None])[-1]
        return self.text((request.id, last)) if last is not None else ""

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
        node = request.nodes[index]
        role = node.role if isinstance(node, Generate) else "answer"
        parts = [_INSTRUCTIONS.get(role, _ANSWER)]
        retrieval = self._latest(request, index, Retrieve)
        ids = [int(i) for i in topk(retrieval) if i >= 0][: self._per_prompt] if retrieval is not None else []
        if ids:
            passages = "\n".join(f"[{n}] {self._passage(pid)[: self._chars]}" for n, pid in enumerate(ids, 1))
            parts.append(f"Passages:\n{passages}")
        previous = self._latest(request, index, Generate)
        notes = self.text((request.id, previous)) if previous is not None else ""
        if notes:
            parts.append(f"Notes so far: {notes}")
        parts.append(f"Question: {request.question}")
        return [{"role": "user", "content": "\n\n".join(parts)}]

    @staticmethod
    def _latest(request: Request, index: int, kind: type) -> int | None:
        """The nearest node of type `kind` before node `index` (the workflows are chains)."""
        return next((i for i in range(index - 1, -1, -1) if isinstance(request.nodes[i], kind)), None)
