"""METIS-like workloads: per-question profiles and a quality model per (question, configuration).

Source: METIS / RAGServe (arXiv 2412.10543). Its evaluation asks Musique, SQuAD, KG RAG FinSec
and QMSUM questions; for each, a profiler LLM returns complexity, joint reasoning, pieces of
information and a summary length range with a confidence, and answer quality (F1) depends on
the synthesis method, the number of chunks and the intermediate length. No model here can
answer or profile such questions offline, so a synthetic trace draws both from declared
models, and names them in every output:

- `PROFILE_MODEL` ("model:metis-profile-v1"): each question has *true* needs (pieces n in the
  dataset's range, joint reasoning and complexity with the dataset's odds, the summary length
  it needs); the profiler's confidence is Beta(12, 1) (72% at or above METIS's 0.9);
  a confident profile reports the truth, an unconfident one is off by one or two pieces and
  flips joint / complexity with probability 0.3 each.
- `QUALITY_MODEL` ("model:metis-curves-v1"): F1 = q x coverage x method fit + noise, with q the
  question's ceiling (Beta around the dataset's best F1), coverage = 1 - exp(-1.1 c / n) (the
  share of the n needed pieces among the top c chunks: METIS's num_chunks in [n, 3n]), stuff
  diluted past 12 chunks (lost in the middle) and 0.8x on complex questions, map_rerank
  (1/n)^0.7 on joint questions (one chunk answers), map_reduce sqrt(min(1, L / needed words))
  and 0.92x on simple questions; noise N(0, 0.03) per (question, configuration), F1 in [0, 1].
  The shape follows METIS's figures (quality rises with chunks and flattens, stuff falls past
  its best, map_rerank fails joint questions, map_reduce needs long enough summaries); its
  constants are set by hand, not fitted to the paper's data, which is not public.

A question decomposed by its dataset (FanOutQA) gets its profile from the decomposition
instead (`profile_from_decomposition`: pieces = sub-questions), source "fanoutqa-decomposition".
A question with gold answers (FanOutQA, a FlashRAG dataset) gets its `answer_tokens` from them
instead of the dataset shape's draw (`gold_answer_tokens`: the longest gold answer's words x 1.3
tokens, the generator's own count, x `ANSWER_MARGIN` 2.5, within `ANSWER_BOUNDS` 16-256),
`answer_source` "gold-answer"; a drawn one has no `answer_source`.
The profiling call itself is the workflow's first node, a generation of the `profile` role
(`traces.datasets.ROLES`: METIS's prompt with one line of database metadata, ~330 tokens, plus
the question; ~48 output tokens, the profile as JSON), so its cost is paid on both bodies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ragraph.synthesis import LENGTH_CHOICES, NUM_CHUNKS, TOKENS_PER_WORD, Method, SynthesisConfig, space

PROFILE_MODEL = "model:metis-profile-v1"
QUALITY_MODEL = "model:metis-curves-v1"
DECOMPOSITION = "fanoutqa-decomposition"
GOLD_ANSWER = "gold-answer"  # `synthesis.answer_source` of answer_tokens taken from the gold answers
# words x 1.3 undercounts a gold answer's list of names and numbers: under smollm2's tokenizer
# FanOutQA's 310 dev answers take a median 1.56x, a 90th percentile 2.5x of it (2026-12-05); x 2.5
# covers 92% of them (x 1.5 only 52%), and a model that answers stops at its end of turn anyway
ANSWER_MARGIN = 2.5
ANSWER_BOUNDS = (16, 256)  # room for "yes" in a sentence; FanOutQA's longest answer is 219 smollm2 tokens
INTERMEDIATE_GRID = LENGTH_CHOICES  # intermediate lengths a quality table holds (words)
CHUNK_TOKENS = 180  # one chunk: 35 of them plus a question fit the H100 profile's 8192-token context
SYNTH_TEMPLATE = 60  # tokens of a synthesis prompt's template
DEFAULT_CONFIG = SynthesisConfig(Method.STUFF, 10)  # what a policy that does not choose runs
NOISE = 0.03
CONFIDENT = 0.9  # METIS's confidence threshold


@dataclass(frozen=True)
class MetisDataset:
    name: str
    pieces: tuple[int, int]  # range of pieces of information a question needs
    joint: float  # share needing joint reasoning
    complex: float  # share of high complexity
    summary_words: tuple[int, int]  # words a chunk summary needs
    ceiling: float  # mean F1 of a question's best configuration
    question_words: float
    answer_tokens: int  # median answer tokens


DATASETS = {d.name: d for d in (
    MetisDataset("musique", (2, 4), 0.9, 0.7, (30, 80), 0.55, 16.0, 12),
    MetisDataset("squad", (1, 1), 0.1, 0.1, (30, 60), 0.75, 11.0, 8),
    MetisDataset("finsec", (2, 6), 0.8, 0.6, (40, 120), 0.6, 14.0, 40),
    MetisDataset("qmsum", (4, 10), 1.0, 0.5, (60, 200), 0.45, 12.0, 80),
)}


@dataclass(frozen=True)
class Needs:
    """What a question truly needs (hidden from policies; the quality model reads it)."""

    pieces: int
    joint: bool
    complex: bool
    summary_words: int
    ceiling: float


def draw_needs(ds: MetisDataset, rng: np.random.Generator) -> Needs:
    lo, hi = ds.pieces
    words = int(rng.integers(ds.summary_words[0], ds.summary_words[1] + 1))
    a = 8.0
    ceiling = float(rng.beta(a * ds.ceiling / (1 - ds.ceiling), a)) if ds.ceiling < 1 else 1.0
    return Needs(int(rng.integers(lo, hi + 1)), bool(rng.random() < ds.joint), bool(rng.random() < ds.complex),
                 words, ceiling)


def draw_profile(needs: Needs, rng: np.random.Generator) -> dict:
    """The profiler's output for a question with `needs` (trace `synthesis.profile`)."""
    confidence = float(rng.beta(12.0, 1.0))
    pieces, joint, complex_ = needs.pieces, needs.joint, needs.complex
    if confidence < CONFIDENT:
        pieces = int(np.clip(pieces + rng.choice([-2, -1, 1, 2]), 1, 10))
        joint ^= bool(rng.random() < 0.3)
        complex_ ^= bool(rng.random() < 0.3)
    lo = max(30, needs.summary_words - 20)
    return {"complexity": "high" if complex_ else "low", "joint": joint, "pieces": pieces,
            "summary_range": [lo, min(200, lo + 40)], "confidence": round(confidence, 3), "source": PROFILE_MODEL}


def profile_from_decomposition(sub_questions: int, confidence: float = 1.0) -> dict:
    """A FanOutQA question's profile from its decomposition: pieces = sub-questions (1-10),
    joint reasoning when there is more than one, complexity high from three on."""
    pieces = int(np.clip(sub_questions, 1, 10))
    return {"complexity": "high" if pieces >= 3 else "low", "joint": pieces > 1, "pieces": pieces,
            "summary_range": [30, 70], "confidence": confidence, "source": DECOMPOSITION}


def gold_answer_tokens(answers: Sequence[str]) -> int:
    """`answer_tokens` for a question with gold `answers`: the longest one's tokens as the trace
    generator counts them (words x `TOKENS_PER_WORD`), x `ANSWER_MARGIN`, within `ANSWER_BOUNDS`."""
    words = max((len(a.split()) for a in answers), default=0)
    tokens = math.ceil(math.ceil(words * TOKENS_PER_WORD) * ANSWER_MARGIN)
    return min(ANSWER_BOUNDS[1], max(ANSWER_BOUNDS[0], tokens))


def quality(needs: Needs, config: SynthesisConfig) -> float:
    """The model's F1 of `config` for a question with `needs`, before noise."""
    c, n = config.num_chunks, needs.pieces
    cover = 1.0 - math.exp(-1.1 * c / n)
    if config.method is Method.STUFF:
        fit = (0.8 if needs.complex else 1.0) / (1.0 + 0.02 * max(0, c - 12))
    elif config.method is Method.MAP_RERANK:
        fit = (1.0 / n) ** 0.7 if needs.joint else 1.0
    else:
        fit = math.sqrt(min(1.0, config.intermediate_length / needs.summary_words)) * (1.0 if needs.complex else 0.92)
    return needs.ceiling * cover * fit


def table_configs(max_chunks: int = NUM_CHUNKS[1]) -> list[SynthesisConfig]:
    """Every configuration a quality table holds: every one a policy may choose."""
    return list(space(max_chunks))


def draw_quality(needs: Needs, rng: np.random.Generator, max_chunks: int = NUM_CHUNKS[1]) -> dict:
    """The trace's quality table for one question (`synthesis.quality`)."""
    configs = table_configs(max_chunks)
    noise = rng.normal(0.0, NOISE, len(configs))
    f1 = {cfg.label: round(float(np.clip(quality(needs, cfg) + e, 0.0, 1.0)), 3)
          for cfg, e in zip(configs, noise, strict=True)}
    return {"source": QUALITY_MODEL, "f1": f1}


def draw_synthesis(rng: np.random.Generator, question_tokens: int, max_chunks: int, dataset: str) -> dict:
    """A request's `synthesis` record (docs/traces.md): its token shape, default configuration,
    profile and quality table, for a question of `dataset`."""
    ds = DATASETS[dataset]
    needs = draw_needs(ds, rng)
    answer = int(np.clip(round(rng.lognormal(math.log(ds.answer_tokens), 0.4)), 2, 128))
    return {"question_tokens": question_tokens, "chunk_tokens": CHUNK_TOKENS, "template_tokens": SYNTH_TEMPLATE,
            "answer_tokens": answer,
            "default": {"method": DEFAULT_CONFIG.method.value,
                        "num_chunks": min(DEFAULT_CONFIG.num_chunks, max_chunks)},
            "profile": draw_profile(needs, rng), "quality": draw_quality(needs, rng, max_chunks)}


def pick_dataset(rng: np.random.Generator) -> MetisDataset:
    """One of METIS's four datasets, in equal shares."""
    names = list(DATASETS)
    return DATASETS[names[int(rng.integers(len(names)))]]


def question_tokens(ds: MetisDataset, rng: np.random.Generator) -> int:
    return max(3, round(rng.lognormal(math.log(ds.question_words), 0.3) * 1.3))
