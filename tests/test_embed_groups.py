"""A search call's new queries embedded in model calls grouped by length (`ragraph.work.embed_groups`),
as both bodies run and price them."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodel.latency import LatencyModel
from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
from ragraph.work import EMBED_CALL_TOKENS, ScanTask, SearchBatch, embed_cost, embed_groups


def brute_force(tokens: list[int]) -> float:
    """The least sum over calls of (EMBED_CALL_TOKENS + texts x longest), over every contiguous cut
    of the lengths sorted longest first."""
    ordered = sorted(tokens, reverse=True)
    n, best = len(ordered), float("inf")
    for cuts in itertools.product((False, True), repeat=max(n - 1, 0)):
        cost, start = 0.0, 0
        for i in range(1, n + 1):
            if i == n or cuts[i - 1]:
                cost += EMBED_CALL_TOKENS + (i - start) * ordered[start]
                start = i
        best = min(best, cost)
    return best


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=8))
def test_groups_cover_every_text_once_at_the_least_cost(tokens):
    groups = embed_groups(tokens)
    assert sorted(i for g in groups for i in g) == list(range(len(tokens)))
    calls, padded = embed_cost(tokens, groups)
    assert EMBED_CALL_TOKENS * calls + padded == pytest.approx(brute_force(tokens))


def test_mixed_lengths_split_and_similar_ones_stay_in_one_call():
    assert embed_groups([60, 62, 63, 64, 66, 68]) == [[5, 4, 3, 2, 1, 0]]
    assert embed_cost([20, 40, 63, 80, 110, 142], embed_groups([20, 40, 63, 80, 110, 142]))[0] > 1


def tasks(*tokens: int) -> SearchBatch:
    return SearchBatch(tuple(ScanTask(("r", i), (0,), 1, first=True, last=True, embed_tokens=n)
                             for i, n in enumerate(tokens)))


def test_a_search_call_is_priced_by_its_model_calls_and_padded_tokens():
    latency = LatencyModel(load_profile(DEFAULT_CPU_PROFILE))
    sizes = latency.list_sizes
    similar, mixed = tasks(60, 62, 64).timeline_args(sizes), tasks(20, 140, 30, 150).timeline_args(sizes)
    assert (similar["embed_calls"], similar["embed_padded_tokens"]) == (1, 3 * 64)
    assert (mixed["embed_calls"], mixed["embed_padded_tokens"]) == (2, 2 * 150 + 2 * 30)
    one_call = {**mixed, "embed_calls": None, "embed_padded_tokens": None}  # every text padded to 150
    m = latency.profile.cpu_search
    saved = 150 * 4 - (2 * 150 + 2 * 30)
    assert latency.search_call_s(one_call) - latency.search_call_s(mixed) == pytest.approx(
        m.embed_token_s * saved - m.embed_call_s)
    assert tasks(80).timeline_args(sizes)["embed_calls"] == 1
    assert SearchBatch((ScanTask(("r", 0), (0,), 1, first=False, last=True),)).timeline_args(sizes)["embed_calls"] == 0
