"""Fit the synthetic truth model (traces/truth_model.py) on a real corpus and write its JSON.

    HF_HUB_OFFLINE=1 python -m benchmarks.fit_truth_model [--corpus wiki|DIR] [--requests 300]
        [--dataset fanoutqa|templates]

Generates a corpus trace of the workflows with follow-up retrievals (irg, multistep) and
retrievals after a generation (hyde), realized on the corpus with k = 20 (so every one of
the best 20 results has its list), and counts, over its retrievals:

- `position_pmf`: where in the probe list (coarse order) each distinct hit list of the best 20 sits;
- `same_list[j]`: for first retrievals, how often result j lies in a better result's list;
- `follow[j]`, `cache_rank[j]`, `hit_rank[j]`: for follow-ups, the category of result j (a
  previous result; a new passage in a previous result's list; in another previously probed list;
  elsewhere) and which previous rank the first two point to;
- `prefix_same[k-1]`: for retrievals after a generation, how often the 25/50/75% prefix of
  the query (embedded and searched in its own probe list) finds the same top-k, k = 1..20.

The questions (`--dataset`): `fanoutqa` (the default; needs the fanoutqa package) asks
FanOutQA's dev questions in order, and a follow-up retrieval searches the question's next
human-written sub-question (backends/real_trace.py): real follow-up text. `templates` asks the
corpus's template questions, whose follow-ups search the question plus the previous top
passage (the fit before FanOutQA: locality near 100%, far above the paper's).

Prints the locality (traces.locality) of a k = 1 corpus trace and of a synthetic one drawn
from the model at traces/truth_model.json (the new fit, unless --out wrote elsewhere), beside
the paper's Fig. 9a.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

from backends.corpus import embedder_for, ensure_wiki_corpus, load_corpus
from backends.real_trace import realize_trace, search_in_probe_lists
from ragraph.graph import PREFIX_FRACTIONS, query_prefix
from ragraph.workflows import WorkflowRegistry
from traces.generate import TraceConfig, generate_trace
from traces.locality import PAPER_FIG9A, locality
from traces.questions import Question, named_dataset
from traces.schema import TraceRequest, to_request
from traces.truth_model import CATEGORIES, MODEL_PATH, TOP, TruthParams

WORKFLOWS = ("irg", "multistep", "hyde")
FOLLOW_UPS = {True: "sub-questions", False: "question + previous top passage"}  # by: a dataset asked


def _retrievals(rows: list[dict]) -> list[list[dict]]:
    return [[st for st in row["stages"] if st["op"] == "retrieve"] for row in rows]


def fit(rows: list[dict], prefix_hits: list[np.ndarray], meta: dict) -> TruthParams:
    """Count the parameters from a corpus trace realized with k = 20 (see the module docstring);
    `prefix_hits[i]` is the top-20 of the i-th after-generation retrieval's prefixes (3 x 20)."""
    nprobe = meta["nprobe"]
    pos = np.zeros(nprobe)
    same = np.zeros((TOP, 2))
    follow = np.zeros((TOP, len(CATEGORIES)))
    cache_rank, hit_rank = np.zeros((TOP, TOP)), np.zeros((TOP, TOP))
    for chain in _retrievals(rows):
        for i, st in enumerate(chain):
            t, probe = st["truth"], st["clusters"]
            for c in dict.fromkeys(t["hits"]):
                pos[probe.index(c)] += 1
            if i == 0:
                for j in range(1, len(t["hits"])):
                    same[j] += (t["hits"][j] in t["hits"][:j], 1)
                continue
            prev = chain[i - 1]
            pt, pprobe = prev["truth"], set(prev["clusters"])
            for j, (pid, c) in enumerate(zip(t["topk"], t["hits"], strict=True)):
                if pid in pt["topk"]:
                    follow[j, 0] += 1
                    cache_rank[j, pt["topk"].index(pid)] += 1
                elif c in pt["hits"]:
                    follow[j, 1] += 1
                    hit_rank[j, pt["hits"].index(c)] += 1
                else:
                    follow[j, 2 if c in pprobe else 3] += 1
    prefix = np.zeros((TOP, len(PREFIX_FRACTIONS)))
    after = [st for chain in _retrievals(rows) for st in chain if st["truth"]["prefix_same"]]
    for st, found in zip(after, prefix_hits, strict=True):
        top = st["truth"]["top20"]
        for k in range(1, TOP + 1):
            prefix[k - 1] += [list(f[:k]) == top[:k] for f in found]
    return TruthParams(
        position_pmf=tuple(np.round(pos / pos.sum(), 6)),
        same_list=tuple(np.round(same[:, 0] / np.maximum(same[:, 1], 1), 6)),
        follow=tuple(tuple(np.round(r / max(r.sum(), 1), 6)) for r in follow),
        cache_rank=tuple(tuple(np.round(r / max(r.sum(), 1), 6)) for r in cache_rank),
        hit_rank=tuple(tuple(np.round(r / max(r.sum(), 1), 6)) for r in hit_rank),
        prefix_same=tuple(tuple(np.round(r / max(len(after), 1), 6)) for r in prefix),
        fitted_on={**meta, "follow_ups": int(follow[0].sum()), "after_generation": len(after)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="wiki")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(MODEL_PATH))
    ap.add_argument("--dataset", default="fanoutqa", help="fanoutqa (sub-question follow-ups) or templates")
    a = ap.parse_args()
    questions = None if a.dataset == "templates" else named_dataset(a.dataset)
    corpus = ensure_wiki_corpus() if a.corpus == "wiki" else load_corpus(a.corpus)
    embedder = embedder_for(corpus)
    nprobe = max(1, corpus.nlist // 8)  # what `hedra trace gen --corpus` uses by default
    cfg = TraceConfig(WORKFLOWS, 1.0, float(a.requests), seed=a.seed, nprobe=nprobe, k=TOP, nlist=corpus.nlist,
                      truth=False)
    rows = realize_trace(generate_trace(cfg), corpus, embedder, seed=a.seed, questions=questions)
    after = [st for chain in _retrievals(rows) for st in chain if st["truth"]["prefix_same"]]
    texts = [query_prefix(st["query"], f) for st in after for f in PREFIX_FRACTIONS]
    saved = corpus.index.nprobe
    try:
        _, found = search_in_probe_lists(corpus.index, embedder.encode(texts), [nprobe] * len(texts), TOP)
    finally:
        corpus.index.nprobe = saved
    m = len(PREFIX_FRACTIONS)
    prefix_hits = [found[i * m:(i + 1) * m] for i in range(len(after))]
    meta = {"corpus": corpus.manifest.get("kind", ""), "index": corpus.index_identity, "nlist": corpus.nlist,
            "nprobe": nprobe, "ntotal": corpus.ntotal, "workflows": list(WORKFLOWS), "requests": len(rows),
            "retrievals": sum(len(c) for c in _retrievals(rows)), "seed": a.seed,
            "questions": a.dataset, "follow_up_queries": FOLLOW_UPS[questions is not None],
            "script": "benchmarks/fit_truth_model.py"}
    params = fit(rows, prefix_hits, meta)
    params.dump(a.out)
    print(f"wrote {a.out}: {json.dumps(params.fitted_on)}")
    measured = report(corpus, embedder, nprobe, a.seed, questions)
    params.fitted_on["corpus_locality_k1"] = measured  # what tests hold the synthetic model's figures to
    params.dump(a.out)


def report(corpus, embedder, nprobe: int, seed: int, questions: list[Question] | None = None) -> dict | None:
    """Locality of k = 1 traces of irg + multistep: the corpus's (returned), the fitted model's,
    the paper's."""
    reg = WorkflowRegistry()
    cfg = TraceConfig(("irg", "multistep"), 1.0, 200.0, seed=seed + 1, nprobe=nprobe, k=1, nlist=corpus.nlist)
    real = realize_trace(generate_trace(cfg), corpus, embedder, seed=seed + 1, questions=questions)
    synth = generate_trace(cfg)
    measured = {}
    for name, rows in (("corpus", real), ("synthetic", synth)):
        measured[name] = locality([to_request(TraceRequest.model_validate(r), reg) for r in rows])
        print(name, json.dumps(measured[name]))
    print("paper (Fig. 9a, 'up to')", json.dumps(PAPER_FIG9A))
    distinct = Counter(len(set(st["truth"]["hits"])) for chain in _retrievals(real) for st in chain)
    print("corpus distinct hit lists per top-1 retrieval:", dict(distinct))
    return measured["corpus"]


if __name__ == "__main__":
    main()
