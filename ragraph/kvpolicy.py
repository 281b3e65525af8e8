"""KV-cache policies: which cached prefix blocks an engine evicts first, an axis of its own.

A KV policy is chosen beside the scheduling policy (`--kv-policy`, DESIGN §5). The core
computes what a policy needs from the workflow graphs in flight and hands it to the engine
with each step (`GenStep.kv_steps`); the body's block pool orders its evictions by it (the
simulator: `sim.block_pool`). This module is pure: no clock, no I/O.

- `lru`: vLLM's own order (the free queue: least recently freed first, a sequence's tail
  before its head). Needs nothing from the core.
- `kvflow` (KVFlow, Pan et al., arXiv 2507.07400): each pending generation's *steps to
  execution* in its request's graph: 0 if it runs now (or is ready to); for a node still
  waiting, the largest of its predecessors' + 1 (an AND join: all must finish) or the smallest
  + 1 (an OR join). The value goes on the last block of the node's declared prefix (an agent's
  fixed prompt); a shared block takes the minimum of the blocks below it. Eviction takes
  unshared suffixes first (content no declared prefix holds), then the prefix blocks of the
  largest steps to execution (blocks no request in flight will use: infinitely far), the
  least recently freed first among equals, a branch before the stem it hangs from. It also
  prefetches the prefixes of generations due within `load_ahead` steps (default 2), where the
  body can (the simulator, with a host-memory tier `engine.host_kv_gib`: copies host to GPU in
  the background, and the engine skips, does not stall on, a request whose prefix is still
  loading; the real CPU body: a prefill-only warm-up, `backends.kv_order`); `kvflow:no-prefetch`
  evicts only.
- `ragcache` (RAGCache, Jin et al., arXiv 2404.12457): the prefix tree of retrieved documents'
  KV (the same documents in another order are another path) with prefix-aware
  Greedy-Dual-Size-Frequency replacement: a node's priority is clock + frequency x cost / size
  (cost: the node's recomputation time, size: its blocks; the clock rises to the priority of
  each node evicted), the lowest priority evicted first, leaves before their stems; unshared
  suffixes first, as kvflow. The simulator's only (`sim.kv_order`).

Specs: `name[:option,...]`; options `no-prefetch` and `load_ahead=N` (kvflow only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ragraph.graph import Generate, PrefixId
from ragraph.runtime import RequestRun
from ragraph.state import NodeState

KV_POLICIES: dict[str, str] = {
    "lru": "vLLM's order: least recently freed cached blocks first",
    "kvflow": "KVFlow: unshared suffixes first, then prefixes by largest steps to execution in the workflow graphs"
              " (with a host tier: prefetch of the prefixes due within load_ahead steps; kvflow:no-prefetch)",
    "ragcache": "RAGCache: the knowledge tree of documents' KV, PGDSF replacement (clock + frequency x cost / size)",
}
DEFAULT_LOAD_AHEAD = 2  # KVFlow's load_ahead_step
SIM_ONLY_KV_POLICIES = frozenset({"ragcache"})  # policies only the simulator's block pool implements
DEFAULT_KV_POLICY = "lru"
_DONE = -1  # a finished node's steps (its successors may run now: max(...) + 1 = 0)
_NOW = (NodeState.READY, NodeState.RUNNING, NodeState.SPECULATIVE, NodeState.SPEC_DONE)


class KVPolicyError(ValueError):
    """An unknown KV policy."""


@dataclass(frozen=True, slots=True)
class KVPolicy:
    """A validated KV policy choice (parsed once at the edge, passed inward)."""

    name: str
    prefetch: bool = True  # kvflow: prefetch the prefixes due within load_ahead steps (where the body can)
    load_ahead: int = DEFAULT_LOAD_AHEAD  # kvflow: prefetch prefixes due within this many steps

    @property
    def wants_steps(self) -> bool:
        """Whether the core computes steps to execution for the engine (`GenStep.kv_steps`)."""
        return self.name == "kvflow"

    @property
    def spec(self) -> str:
        """The canonical spec string (options that differ from the defaults only)."""
        opts = [] if self.prefetch else ["no-prefetch"]
        if self.load_ahead != DEFAULT_LOAD_AHEAD:
            opts.append(f"load_ahead={self.load_ahead}")
        return f"{self.name}:{','.join(opts)}" if opts else self.name


def parse_kv_policy(spec: str) -> KVPolicy:
    """The KV policy of `spec` (`name[:option,...]`); raises KVPolicyError naming the known
    policies, or the option that is wrong."""
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in KV_POLICIES:
        raise KVPolicyError(f"unknown KV policy {spec!r} (known: {', '.join(KV_POLICIES)})")
    prefetch, load_ahead = True, DEFAULT_LOAD_AHEAD
    for opt in (o.strip() for o in rest.split(",") if o.strip()):
        key, eq, value = opt.partition("=")
        if name != "kvflow":
            raise KVPolicyError(f"KV policy {name!r} takes no option ({opt!r})")
        if opt == "no-prefetch":
            prefetch = False
        elif key.strip() == "load_ahead" and eq and value.strip().isdigit():
            load_ahead = int(value)
        else:
            raise KVPolicyError(f"KV policy {spec!r}: unknown option {opt!r} (known: no-prefetch, load_ahead=N)")
    return KVPolicy(name, prefetch, load_ahead)


def split_kv_policies(text: str) -> list[str]:
    """KV policy specs from a comma-separated list whose specs may hold commas themselves
    (`lru,kvflow:no-prefetch,load_ahead=3`): a part that does not start with a policy's name
    continues the spec before it when that one has options."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if out and ":" in out[-1] and part.partition(":")[0].strip() not in KV_POLICIES:
            out[-1] += "," + part
        else:
            out.append(part)
    return out


def steps_to_execution(run: RequestRun, or_joins: frozenset[int] = frozenset()) -> list[int]:
    """Per node of `run` (by index): -1 if it finished, 0 if it runs or may run now, else over
    its predecessors max + 1 (an AND join) or min + 1 (for the nodes in `or_joins`)."""
    deps = run.deps  # (with the nodes a run-time synthesis appended)
    out: list[int] = []
    for i, node in enumerate(run.nodes):
        state = node.state
        if state is NodeState.DONE or state is NodeState.FAILED:
            out.append(_DONE)
        elif state in _NOW or not deps[i]:
            out.append(0)
        else:
            pred = [out[d] for d in deps[i]]
            out.append((min(pred) if i in or_joins else max(pred)) + 1)
    return out


def prefix_steps(runs: Iterable[RequestRun],
                 or_joins: Mapping[str, frozenset[int]] | None = None) -> tuple[tuple[PrefixId, int], ...]:
    """(prefix identity, steps to execution) of every unfinished generation with a declared prefix
    in the requests `runs`, the smallest per prefix, in first-seen order (deterministic)."""
    best: dict[PrefixId, int] = {}
    for run in runs:
        steps = steps_to_execution(run, (or_joins or {}).get(run.request.id, frozenset()))
        for node, s in zip(run.nodes, steps, strict=True):
            spec = node.spec
            if s < 0 or not isinstance(spec, Generate):
                continue
            pid = spec.prefix_id
            if pid is not None and s < best.get(pid, s + 1):
                best[pid] = s
    return tuple(best.items())
