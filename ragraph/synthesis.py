"""Synthesis over retrieved chunks: the fan-out methods and a request's run-time configuration.

Source: RAGServe / METIS (arXiv 2412.10543). A RAG answer is synthesised from the top
`num_chunks` retrieved chunks by one of three methods, each a small graph of Generate nodes:

- `stuff`: one generation over all chunks (prompt = template + question + chunks);
- `map_reduce`: one *map* generation per chunk, each summarising it in at most
  `intermediate_length` words, then one *reduce* generation over the summaries (a fan-out and
  a join: the reduce waits for every map);
- `map_rerank`: one generation per chunk that answers and scores itself; the best-scored answer
  is kept (a fan-out whose join is a pick, not a generation: the request ends when every map
  has answered).

A request whose workflow ends in a synthesis step chosen at run time (`synthesis = "auto"`)
carries a `Synthesis` (its token shape, default configuration, profile and quality table); the
core asks the policy for a `SynthesisConfig` once the request's fixed nodes are done
(`Policy.configure`) and appends the nodes `expand` builds. Pure data and functions: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from math import ceil

from ragraph.graph import Generate

NUM_CHUNKS = (1, 35)  # METIS's explored range of num_chunks
INTERMEDIATE_LENGTH = (1, 100)  # METIS's range of intermediate_length (words per map summary)
TOKENS_PER_WORD = 1.3  # English words to tokens (as traces.datasets)
LENGTH_CHOICES = (10, 25, 50, 100)  # intermediate lengths policies choose from (and quality tables hold)
RERANK_SCORE_TOKENS = 3  # a map_rerank answer ends with its score ("Score: 87")
MEASURED = "measured"  # a measured quality table's source: "measured" or "measured:MODEL" (not a declared model)


class Method(StrEnum):
    STUFF = "stuff"
    MAP_REDUCE = "map_reduce"
    MAP_RERANK = "map_rerank"


class ConfigError(ValueError):
    """A configuration outside METIS's ranges, or a fan-out over zero chunks."""


@dataclass(frozen=True, slots=True)
class SynthesisConfig:
    """One request's synthesis knobs (METIS's configuration space)."""

    method: Method
    num_chunks: int  # chunks synthesised over (the top `num_chunks` of the retrieval)
    intermediate_length: int = 0  # words per map summary (map_reduce only; 0 for the others)

    def problem(self, max_chunks: int = NUM_CHUNKS[1]) -> str:
        """Why this configuration is not allowed ("" if it is)."""
        if self.num_chunks < 1:
            return f"a fan-out over zero chunks (num_chunks {self.num_chunks})"
        if not NUM_CHUNKS[0] <= self.num_chunks <= min(NUM_CHUNKS[1], max_chunks):
            return f"num_chunks {self.num_chunks} outside {NUM_CHUNKS[0]}-{min(NUM_CHUNKS[1], max_chunks)}"
        lo, hi = INTERMEDIATE_LENGTH
        if self.method is Method.MAP_REDUCE and not lo <= self.intermediate_length <= hi:
            return f"intermediate_length {self.intermediate_length} outside {lo}-{hi} (map_reduce)"
        if self.method is not Method.MAP_REDUCE and self.intermediate_length:
            return f"intermediate_length is for map_reduce only ({self.method.value})"
        return ""

    @property
    def label(self) -> str:
        """`method:chunks=N[,length=L]`: how records, tables and specs name it."""
        tail = f",length={self.intermediate_length}" if self.method is Method.MAP_REDUCE else ""
        return f"{self.method.value}:chunks={self.num_chunks}{tail}"


def parse_config(text: str) -> SynthesisConfig:
    """The configuration a `label` names; raises ConfigError."""
    method, _, rest = text.partition(":")
    fields = dict(p.partition("=")[::2] for p in rest.split(",") if p)
    try:
        config = SynthesisConfig(Method(method), int(fields.get("chunks", "0")), int(fields.get("length", "0")))
    except ValueError:
        raise ConfigError(f"not a synthesis configuration: {text!r}") from None
    if why := config.problem():
        raise ConfigError(f"{text}: {why}")
    return config


@dataclass(frozen=True, slots=True)
class QueryProfile:
    """METIS's profiler output for one query (what a policy may read before choosing)."""

    complexity: str  # "high" or "low"
    joint: bool  # needs joint reasoning across chunks
    pieces: int  # pieces of information needed (1-10)
    summary_range: tuple[int, int]  # words a chunk summary needs (30-200)
    confidence: float  # the profiler's confidence in [0, 1] (METIS: output-token probabilities)
    source: str  # where it came from ("model:metis-profile-v1", "fanoutqa-decomposition", ...)


@dataclass(frozen=True, slots=True)
class Synthesis:
    """What the core needs to build a request's synthesis for any configuration, and what a
    policy may know about the query."""

    question_tokens: int  # the question's tokens (in every synthesis prompt)
    chunk_tokens: int  # tokens of one retrieved chunk
    template_tokens: int  # prompt template of each synthesis call (shared prefix)
    answer_tokens: int  # tokens of the final answer (stuff, reduce, and each map_rerank answer)
    max_chunks: int  # chunks the retrieval returned: the most a configuration may use
    default: SynthesisConfig  # what a policy that does not choose runs
    profile: QueryProfile | None = None
    quality: tuple[tuple[str, float], ...] = ()  # (config label, F1) pairs: the quality table
    quality_source: str = ""  # e.g. "model:metis-curves-v1" or "measured"

    @property
    def measured(self) -> bool:
        """Whether the quality table is measured (answers scored on a body), not drawn from a model."""
        return bool(self.quality) and self.quality_source.partition(":")[0] == MEASURED

    def table_configs(self) -> list[SynthesisConfig]:
        """The quality table's configurations that run over this request's chunks, in table order."""
        configs = (parse_config(label) for label, _ in self.quality)
        return [c for c in configs if not c.problem(self.max_chunks)]

    def f1(self, config: SynthesisConfig) -> float | None:
        """The table's F1 of `config` (None: the table lacks it)."""
        label = config.label
        for name, value in self.quality:
            if name == label:
                return value
        return None


def expand(syn: Synthesis, config: SynthesisConfig, first: int, sources: tuple[int, ...],
           prefix: str) -> tuple[list[Generate], list[tuple[int, ...]]]:
    """The Generate nodes of `config` and their dependencies, numbered from `first`; the
    fan-out's nodes depend on `sources`. Raises ConfigError for a configuration out of range."""
    if why := config.problem(syn.max_chunks):
        raise ConfigError(why)
    base = syn.template_tokens + syn.question_tokens
    if config.method is Method.STUFF:
        prompt = base + config.num_chunks * syn.chunk_tokens
        return [Generate(prompt, syn.answer_tokens, syn.template_tokens, f"{prefix}/stuff", "answer")], [sources]
    n = config.num_chunks
    if config.method is Method.MAP_RERANK:
        out = syn.answer_tokens + RERANK_SCORE_TOKENS
        node = Generate(base + syn.chunk_tokens, out, syn.template_tokens, f"{prefix}/rerank", "rerank")
        return [node] * n, [sources] * n
    summary = max(1, ceil(config.intermediate_length * TOKENS_PER_WORD))
    maps = [Generate(base + syn.chunk_tokens, summary, syn.template_tokens, f"{prefix}/map", "map")] * n
    reduce = Generate(base + n * summary, syn.answer_tokens, syn.template_tokens, f"{prefix}/reduce", "reduce")
    return [*maps, reduce], [sources] * n + [tuple(range(first, first + n))]


def space(max_chunks: int = NUM_CHUNKS[1]) -> tuple[SynthesisConfig, ...]:
    """Every configuration a policy may choose over `max_chunks` chunks (map_reduce with the
    lengths of `LENGTH_CHOICES`), per chunk count: stuff, map_rerank, then map_reduce by length."""
    out: list[SynthesisConfig] = []
    for c in range(NUM_CHUNKS[0], min(max_chunks, NUM_CHUNKS[1]) + 1):
        out += [SynthesisConfig(Method.STUFF, c), SynthesisConfig(Method.MAP_RERANK, c)]
        out += [SynthesisConfig(Method.MAP_REDUCE, c, length) for length in LENGTH_CHOICES]
    return tuple(out)


def longest_call(syn: Synthesis, config: SynthesisConfig) -> int:
    """Prompt + output tokens of `config`'s longest generation: what must fit in one engine call
    (`max_model_len`)."""
    base = syn.template_tokens + syn.question_tokens
    if config.method is Method.STUFF:
        return base + config.num_chunks * syn.chunk_tokens + syn.answer_tokens
    if config.method is Method.MAP_RERANK:
        return base + syn.chunk_tokens + syn.answer_tokens + RERANK_SCORE_TOKENS
    summary = max(1, ceil(config.intermediate_length * TOKENS_PER_WORD))
    return max(base + syn.chunk_tokens + summary, base + config.num_chunks * summary + syn.answer_tokens)


def demand_tokens(syn: Synthesis, config: SynthesisConfig) -> int:
    """KV tokens `config`'s first wave holds at once (its prompts and outputs): what METIS's
    best fit compares with free memory (the reduce of map_reduce runs after its maps free theirs)."""
    base = syn.template_tokens + syn.question_tokens
    if config.method is Method.STUFF:
        return base + config.num_chunks * syn.chunk_tokens + syn.answer_tokens
    if config.method is Method.MAP_RERANK:
        return config.num_chunks * (base + syn.chunk_tokens + syn.answer_tokens + RERANK_SCORE_TOKENS)
    summary = max(1, ceil(config.intermediate_length * TOKENS_PER_WORD))
    return config.num_chunks * (base + syn.chunk_tokens + summary)
