"""A search call's new queries embedded in model calls grouped by length (`ragraph.work.embed_groups`),
as both bodies run and price them."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodel.latency import LatencyModel
from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
from ragraph.policies import POLICIES, make_policy
from ragraph.work import ScanTask, SearchBatch, embed_cost, embed_groups

CUT = 35.0  # a model call's own cost in padded tokens, as the shipped CPU profile's terms put it


def brute_force(tokens: list[int], call_tokens: float) -> float:
    """The least sum over calls of (call_tokens + texts x longest), over every contiguous cut of
    the lengths sorted longest first."""
    ordered = sorted(tokens, reverse=True)
    n, best = len(ordered), float("inf")
    for cuts in itertools.product((False, True), repeat=max(n - 1, 0)):
        cost, start = 0.0, 0
        for i in range(1, n + 1):
            if i == n or cuts[i - 1]:
                cost += call_tokens + (i - start) * ordered[start]
                start = i
        best = min(best, cost)
    return best


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=8),
       st.floats(min_value=0.0, max_value=400.0))
def test_groups_cover_every_text_once_at_the_least_cost(tokens, call_tokens):
    groups = embed_groups(tokens, call_tokens)
    assert sorted(i for g in groups for i in g) == list(range(len(tokens)))
    calls, padded = embed_cost(tokens, groups)
    assert call_tokens * calls + padded == pytest.approx(brute_force(tokens, call_tokens))


def test_mixed_lengths_split_and_similar_ones_stay_in_one_call():
    assert embed_groups([60, 62, 63, 64, 66, 68], CUT) == [[5, 4, 3, 2, 1, 0]]
    mixed = [20, 40, 63, 80, 110, 142]
    assert embed_cost(mixed, embed_groups(mixed, CUT))[0] > 1
    assert embed_groups(mixed, math.inf) == [[5, 4, 3, 2, 1, 0]]  # a call that costs no padding: one call
    assert embed_cost(mixed, embed_groups(mixed, 500.0))[0] == 1  # a dear model call: fewer calls
    assert embed_cost(mixed, embed_groups(mixed, 0.0))[0] == len(mixed)  # a free one: a call per length


def tasks(*tokens: int, call_tokens: float = CUT) -> SearchBatch:
    return SearchBatch(tuple(ScanTask(("r", i), (0,), 1, first=True, last=True, embed_tokens=n)
                             for i, n in enumerate(tokens)), embed_call_tokens=call_tokens)


def test_the_cut_is_the_profiles_and_every_policy_cuts_its_search_calls_there():
    """The cut is a model call's cost over a padded token's, both measured into the profile; each
    policy stamps it on the search calls it plans (the bodies embed as the batch says)."""
    profile = load_profile(DEFAULT_CPU_PROFILE)
    m = profile.cpu_search
    latency = LatencyModel(profile)
    assert latency.embed_call_tokens == pytest.approx(m.embed_call_s / m.embed_token_s)
    dearer = LatencyModel(profile.model_copy(update={"cpu_search": m.model_copy(
        update={"embed_call_s": 4 * m.embed_call_s})}))
    unpriced = LatencyModel(profile.model_copy(update={"cpu_search": m.model_copy(
        update={"embed_token_s": 0.0, "embed_text_token_s": 0.0})}))
    assert dearer.embed_call_tokens == pytest.approx(4 * latency.embed_call_tokens)
    assert unpriced.embed_call_tokens == math.inf
    for name in POLICIES:
        for costs in (latency, dearer):
            assert make_policy(name, costs).embed_call_tokens == costs.embed_call_tokens, name


def test_a_search_call_is_priced_by_its_model_calls_and_padded_tokens():
    latency = LatencyModel(load_profile(DEFAULT_CPU_PROFILE))
    sizes = latency.list_sizes
    assert tasks(20, 140, 30, 150, call_tokens=math.inf).timeline_args(sizes)["embed_calls"] == 1
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
