"""Token-length and iteration models per dataset and workflow role, with their sources.

The HedraRAG evaluation pairs one-shot with NQ, HyDE and RECOMP with HotpotQA, multistep
and IRG with 2WikiMultiHopQA; prompts hold a template, the question, k retrieved 100-word
passages and, in iterative workflows, the text generated so far; every generation is
capped at 128 tokens (the artifact's `max_tokens`). Sources of each figure:

- question words: NQ questions average ~9 words (Kwiatkowski et al., TACL 2019, open
  queries from Google search); HotpotQA questions ~18 words (Yang et al., EMNLP 2018);
  2WikiMultiHopQA ~12 words (Ho et al., COLING 2020, templated questions). Tokens =
  words x 1.3 (Llama-3 tokenizer on English prose).
- passage tokens: DPR-style 100-word Wikipedia passages with their title, ~140 tokens.
- templates: the artifact's prompt templates (docs/notes/hedrarag-artifact-facts.md),
  counted roughly in tokens; the template is the prompt's shared prefix.
- output tokens: not published; estimates for Llama-3.1-8B-Instruct following the
  artifact's instructions ("only give me the answer" -> a few tokens; a hypothetical
  passage or a summary -> near the 128 cap; one IRG sentence -> ~40), lognormal around
  the median with sigma 0.5, clipped to [1, 128]. Marked as assumptions.
- iterations: IRG runs iter_num = 2 (3 R, 3 G) in every artifact script; multistep stops
  when reasoning says "None" or after 2 retrievals. 2Wiki questions are 2-hop by
  construction; the split 10% / 30% / 60% over 0 / 1 / 2 rounds is an assumption.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKENS_PER_WORD = 1.3
PASSAGE_TOKENS = 140
OUTPUT_CAP = 128
OUTPUT_SIGMA = 0.5


@dataclass(frozen=True)
class Dataset:
    name: str
    question_words: float  # mean question length in words


DATASETS = {d.name: d for d in (
    Dataset("nq", 9.0),
    Dataset("hotpotqa", 18.0),
    Dataset("2wikimultihopqa", 12.0),
)}

# role -> (template tokens, median output tokens)
ROLES: dict[str, tuple[int, int]] = {
    "answer": (60, 12),  # "answer the question based on the given document..."
    "hypothesis": (40, 110),  # HyDE: "write a passage to answer the question"
    "compress": (60, 70),  # RECOMP: "summarise the document with respect to the question"
    "reason": (180, 24),  # multistep: LlamaIndex step-decompose template -> next sub-question
    "sentence": (60, 40),  # IRG: write the next sentence of the answer
    "profile": (330, 48),  # METIS's profiler prompt + one line of database metadata -> the profile as JSON
}

# workflow -> role used by its answer-type generations where they differ from "answer"
ANSWER_ROLE = {"irg": "sentence", "multistep": "sentence"}

# workflow -> probabilities of 0, 1, 2, ... iterations (None: fixed default)
ITERATIONS: dict[str, list[float]] = {"multistep": [0.1, 0.3, 0.6]}
