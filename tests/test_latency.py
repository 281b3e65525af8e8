"""The latency models give the figures the analytic profile's notes derive."""

from __future__ import annotations

import pytest

from hwmodel.latency import LatencyModel
from hwmodel.profile import load_profile

PROFILE = load_profile()


def test_cpu_search_matches_the_profile_notes():
    m = LatencyModel(PROFILE)
    per_query = 21_000_000 // 4096 * 256  # one query, nprobe 256, average lists
    # 5.4 GB at the 340 GB/s memory cap, plus call and per-query costs: ~16 ms
    assert m.search_s(1, 0, 256, per_query) == pytest.approx(2e-4 + 2e-5 + per_query * 4096 / 3.4e11)
    assert 0.0158 < m.search_s(1, 0, 256, per_query) < 0.0162
    # one list on one thread runs at the single-thread rate; a new query adds its assignment cost
    assert m.search_s(1, 1, 1, 5000) == pytest.approx(2e-4 + 2e-5 + 5e-4 + 5000 * 4096 / 1.2e10)


def test_list_sizes_are_skewed_and_sum_to_ntotal():
    sizes = LatencyModel(PROFILE).list_sizes
    assert len(sizes) == 4096 and sum(sizes) == 21_000_000
    imbalance = len(sizes) * sum(s * s for s in sizes) / sum(sizes) ** 2
    assert 1.2 < imbalance < 1.7  # exp(0.6^2) = 1.43 in expectation
