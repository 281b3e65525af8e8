"""Wavefronts (HedraRAG §4.2): which waiting retrievals a sub-stage may draw from.

With wavefronts on, every sub-stage draws from the ready retrievals of all concurrent
requests, so a query that arrives mid-search joins at the next sub-stage boundary. Off, a
cohort of queries (all that were waiting when it formed) runs all its sub-stages before the
next cohort may start: the request-at-a-time batching the paper improves on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ragraph.runtime import NodeRun
    from ragraph.view import SchedulerView


class Wavefront:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._cohort: list[NodeRun] = []  # queries of the running cohort (wavefront off)

    def queries(self, s: SchedulerView) -> Iterable[NodeRun]:
        """The queries the next sub-stage may take clusters from, oldest first."""
        if self.enabled:
            return s.retr_waiting.values()
        self._cohort = [n for n in self._cohort if n.key in s.retr_waiting]
        if not self._cohort:
            self._cohort = list(s.retr_waiting.values())
        return self._cohort
