"""The query embedder's padding: one batched call against one call per query (issue 16, item 4).

sentence-transformers pads a call's texts to the longest, so a batched call costs a fixed
overhead plus a price per *padded* token (the shipped CPU profile's search model: 9.6 ms a
call, 0.28 ms a padded token on one core). Queries of mixed lengths (irg's, the last
generation's text) then cost more a query batched than alone. For sets of queries of mixed and
of similar lengths this times one call for the set against one call per query on the core it
is pinned to (`taskset -c 1`) and prints the profile's price for the batched call beside it.
What it tells: whether grouping a search call's queries by length (a call per group) would take
work off the retrieval lane.

    taskset -c 1 python benchmarks/embed_padding.py [--repeats 15] [--profile measured-cpu-tiny-llama-wiki]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

TEXT = ("the history of the roman empire and its many provinces across europe asia and africa, from the"
        " republic to the fall of constantinople in 1453, ") * 8
SETS = {"six of mixed lengths": (20, 40, 63, 80, 110, 141), "six of similar lengths": (60, 62, 63, 64, 66, 68),
        "two of mixed lengths": (30, 90), "one": (63,)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--profile", default=None, help="measured profile to price the batched call with")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from backends.embedder import Embedder
    from hwmodel.embedder_tokens import DEFAULT_EMBEDDER, token_counter
    from hwmodel.latency import LatencyModel
    from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile

    torch.set_num_threads(1)
    embedder, count = Embedder(), token_counter(DEFAULT_EMBEDDER)
    latency = LatencyModel(load_profile(args.profile or DEFAULT_CPU_PROFILE))
    words = TEXT.split()
    print("| queries | tokens each | one call (ms) | one call a query (ms) | one / per query"
          " | profile's price, one call (ms) |")
    print("|---|---|---|---|---|---|")
    for name, lengths in SETS.items():
        texts = [next(t for n in range(1, len(words)) if count(t := " ".join(words[:n])) >= want) for want in lengths]
        tokens = [count(t) for t in texts]
        timed = {}
        for batch in (64, 1):
            embedder.batch_size = batch
            for _ in range(3):
                embedder.encode(texts)
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                embedder.encode(texts)
                runs.append(time.perf_counter() - start)
            timed[batch] = statistics.median(runs)
        price = latency.search_s(len(texts), len(texts), 0, 0, max(tokens), sum(tokens))
        print(f"| {name} | {', '.join(map(str, tokens))} | {timed[64] * 1e3:.1f} | {timed[1] * 1e3:.1f}"
              f" | {timed[64] / timed[1]:.2f} | {price * 1e3:.1f} |")


if __name__ == "__main__":
    main()
