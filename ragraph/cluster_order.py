"""The order of a retrieval's clusters not yet dispatched: the core's actions that change it.

A Retrieve node scans its probe lists in `node.order`, from `node.next_pos` on (what
`Scheduler.take_clusters` dispatches next). Techniques reorder what is left: similarity-aware
reordering puts the lists around a previous query's first (HedraRAG §5.2,
`ragraph.techniques.reorder`), the partial GPU index cache the resident lists first on the GPU
lane and last on the CPU lane (`ragraph.techniques.gpu_cache`). These actions touch the node
alone, never the scheduler's queues, so they live here; the core exposes them to policies
(`Scheduler.reorder`, `sort_remaining`, `partition_remaining`, on the view too). Each replaces
`node.order` with a new tuple only when the order changes (caches keyed on it see the change)
and may seed the node's candidate heap before its first scan; misuse raises `SchedulerError`.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from itertools import filterfalse
from typing import Any

from ragraph.runtime import NodeRun, SchedulerError


def reorder(node: NodeRun, remaining: list[int], seed: tuple[int, ...] = ()) -> None:
    """Replace the not-yet-dispatched clusters of `node` with a permutation of them; `seed`:
    candidate ids for its heap before the first scan (only before that scan)."""
    rest = node.order[node.next_pos:]
    distinct = set(rest)
    if len(remaining) != len(rest) or set(remaining) != distinct or \
            (len(distinct) != len(rest) and sorted(remaining) != sorted(rest)):  # (sorted: lists repeat)
        raise SchedulerError(f"{node.key}: reorder must permute the remaining clusters")
    _check_seed(node, seed)
    node.order = node.order[:node.next_pos] + tuple(remaining)
    _seed(node, seed)


def sort_remaining(node: NodeRun, key: Callable[[int], Any], *, reverse: bool = False,
                   seed: tuple[int, ...] = ()) -> None:
    """Reorder the not-yet-dispatched clusters of `node` by `key`, stably (equal keys keep their
    order, `reverse` too): `reorder` with a permutation made here, so it needs no check (a
    technique's regrouping, e.g. by cache residency, at a fraction of the cost); `seed` as in
    `reorder`."""
    _check_seed(node, seed)
    pos = node.next_pos
    rest = node.order[pos:]
    new = tuple(sorted(rest, key=key, reverse=reverse))
    if new != rest:
        node.order = node.order[:pos] + new if pos else new
    _seed(node, seed)


def partition_remaining(node: NodeRun, groups: Sequence[Container[int]], *, seed: tuple[int, ...] = ()) -> None:
    """Reorder the not-yet-dispatched clusters of `node`: those in `groups[0]` first, then those
    in `groups[1]`, ..., then the others, each group in its current order. The same as
    `sort_remaining` with the key "index of the first group holding the cluster" (len(groups)
    where none does), in a few C-level passes instead of a call per cluster; `seed` as in
    `reorder`."""
    _check_seed(node, seed)
    pos = node.next_pos
    rest = node.order[pos:]
    new: list[int] = []
    tail: tuple[int, ...] | list[int] = rest
    for group in groups:
        has = group.__contains__
        n = len(new)
        new += filter(has, tail)
        if len(new) > n:
            tail = list(filterfalse(has, tail))
    if len(new) < len(rest):
        new += tail
    if len(tail) < len(rest):  # (some cluster joined a group: the order may have changed)
        moved = tuple(new)
        if moved != rest:
            node.order = node.order[:pos] + moved if pos else moved
    _seed(node, seed)


def _check_seed(node: NodeRun, seed: tuple[int, ...]) -> None:
    if seed and node.next_pos:
        raise SchedulerError(f"{node.key}: a seed must be given before the first scan")


def _seed(node: NodeRun, seed: tuple[int, ...]) -> None:
    if seed:
        node.seed = tuple(seed)
