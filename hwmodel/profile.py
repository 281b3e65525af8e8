"""Hardware profiles: the versioned file every simulated duration comes from (DESIGN §7).

A profile names its hardware, model, index and software, says whether it was measured or
derived on paper (`kind: analytic`), and holds the coefficients of the latency models in
`hwmodel.latency`. It is validated with pydantic, and checked for consistency (the
weights and the index cache must fit the GPU, KV capacity must be positive...). Errors
name the file and the field. Profiles are loaded only when asked for, never at import.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILE_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "analytic-h100-llama8b-ivf4096"  # what-if runs (hedra sim, demo)
DEFAULT_CPU_PROFILE = "measured-cpu-tiny-llama-wiki"  # the real CPU body (hedra run, validate): the shipped rig
GIB = 1024**3


class ProfileError(ValueError):
    """A missing, malformed or inconsistent profile (message names file and field)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # no "79.6" for 79.6, no true for 1


class Hardware(_Strict):
    gpu: str | None = None  # None: the engine runs on the CPU (its KV cache is engine.kv_cache_gib)
    gpu_memory_gib: float | None = Field(default=None, gt=0)
    cpu: str
    # family, model, stepping, clock, cache (measured profiles): VMs sold as one model string differ in speed
    cpu_id: str | None = None
    cpu_threads: int = Field(gt=0)  # threads the retrieval lane's search calls use
    gen_cores: list[int] | None = None  # cores the engine thread was pinned to (measured CPU profiles)
    retrieval_cores: list[int] | None = None  # cores of the retrieval lane (measured profiles)
    host_memory_gib: float | None = Field(default=None, gt=0)  # the machine's CPU memory (bounds engine.host_kv_gib)


class LLM(_Strict):
    name: str
    weights_gib: float = Field(gt=0)
    layers: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    kv_dtype_bytes: int = Field(gt=0)

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_dtype_bytes


class Index(_Strict):
    name: str  # FAISS factory string, e.g. IVF4096,Flat
    nlist: int = Field(gt=0)
    ntotal: int = Field(gt=0)
    dim: int = Field(gt=0)
    bytes_per_vector: int = Field(gt=0)
    metric: Literal["inner_product", "l2"] = "inner_product"
    list_size_sigma: float = Field(default=0.0, ge=0, le=4)  # lognormal sigma of IVF list sizes (skew)
    list_size_seed: int = Field(default=0, ge=0)  # seed of the synthetic list sizes
    list_sizes: list[Annotated[int, Field(ge=0)]] | None = None  # measured list sizes; override the synthetic
    identity: str | None = None  # corpus index identity a measured profile was fitted on (backends.corpus)
    embedder: str | None = None  # the query embedder a measured profile's search costs include


class Engine(_Strict):
    """The vLLM engine configuration: the one both bodies read (the simulator's engine model,
    `sim.gen_engine`, and the real vLLM driver)."""

    block_size: int = Field(gt=0)  # tokens per KV block
    max_num_batched_tokens: int = Field(gt=0)  # token budget per step (chunked prefill)
    max_num_seqs: int = Field(gt=0)  # most sequences running at once
    gpu_memory_utilization: float = Field(gt=0, le=1)
    activation_reserve_gib: float = Field(ge=0)  # activations, CUDA graphs, allocator slack
    index_cache_gib: float = Field(default=0.0, ge=0)  # GPU memory given to the cluster cache
    enable_prefix_caching: bool = True  # vLLM's automatic prefix caching (full KV blocks reused by content)
    max_model_len: int = Field(default=8192, gt=0)  # longest prompt + output the engine accepts
    # explicit KV-cache size (vLLM's kv_cache_memory_bytes, vLLM-CPU's VLLM_CPU_KVCACHE_SPACE);
    # None: what GPU memory leaves (see Profile.kv_capacity_blocks)
    kv_cache_gib: float | None = Field(default=None, gt=0)
    # host-memory KV tier (the simulator's): KV blocks evicted from the GPU pool are copied to this
    # much CPU memory over `pcie` and loaded back instead of recomputed; 0: no host tier
    host_kv_gib: float = Field(default=0.0, ge=0)
    # the real engine runs a forward pass of every step size max_num_batched_tokens..1 at start
    # (backends.vllm_engine.VLLMEngine.warm_kernels): vLLM-CPU compiles kernels for each step size the
    # first time it meets it and keeps the most recent few hundred (GenStepModel.kernel_sizes), so a
    # warm engine starts with the smallest sizes compiled, the decode steps' (hwmodel.latency.KernelSizes)
    warm_kernels: bool = False

    @model_validator(mode="after")
    def _as_vllm_requires(self) -> Engine:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (vLLM refuses less)")
        return self


class GenStepModel(_Strict):
    """step_s = base_s + prefill_token_s*prefill + seq_s*seqs + context_token_s*context + admit_s*admitted
    + admit_token_s*admitted_tokens + prefill_attention_s*prefill_attention
    + context_spill_token_s*max(0, context - context_cached_tokens) (see hwmodel.latency.gen_step_s),
    + the refill after a prefill (hwmodel.latency.LatencyModel.refill_s), the kernels of a step size
    run for the first time in a while (hwmodel.latency.KernelSizes) and the cold term."""

    base_s: float = Field(gt=0)  # fixed cost of a step (weights streamed once; the engine's Python)
    prefill_token_s: float = Field(ge=0)  # per prompt token computed
    seq_s: float = Field(ge=0)  # per sequence scheduled in the step (decoding or prefilling)
    context_token_s: float = Field(ge=0)  # per KV token the scheduled sequences attend to
    admit_s: float = Field(default=0.0, ge=0)  # per request the step's item hands to the engine (add_request)
    admit_token_s: float = Field(default=0.0, ge=0)  # per prompt token of those requests (hashing, copying)
    prefill_attention_s: float = Field(default=0.0, ge=0)  # per query-key pair of the prefill chunks' attention
    # KV context beyond what stays in the chip's caches between steps is read from memory: + this per token over
    # `context_cached_tokens` (a CPU rig's last-level cache; 0 on a GPU, whose KV is always read from HBM)
    context_spill_token_s: float = Field(default=0.0, ge=0)
    context_cached_tokens: int = Field(default=0, ge=0)
    # a prefill of P tokens pushes the weights out of the caches: the k-th step after it that computes no prompt
    # tokens pays + refill_s x (1 - exp(-P / refill_tokens)) x refill_decay^(k - 1) (0 on a GPU rig)
    refill_s: float = Field(default=0.0, ge=0)
    refill_tokens: float = Field(default=1024.0, gt=0)
    refill_decay: float = Field(default=0.4, ge=0, lt=1)
    # the CPU engine's matmuls are compiled per step size (tokens computed; oneDNN primitives), and only
    # the `kernel_sizes` most recently run distinct sizes stay compiled: a step of another size pays
    # + kernel_s (0 sizes: no such cache, as on a GPU rig)
    kernel_s: float = Field(default=0.0, ge=0)
    kernel_sizes: int = Field(default=0, ge=0)
    # a step after the engine sat idle runs cold: + cold_s x (1 - exp(-idle / cold_tau_s)); 0 back to back
    cold_s: float = Field(default=0.0, ge=0)
    cold_tau_s: float = Field(default=0.02, gt=0)


class SearchModel(_Strict):
    """One retrieval search call on the CPU (see hwmodel.latency.LatencyModel.search_s): the
    embedding of the queries that start in it, then the scan of their lists."""

    call_s: float = Field(ge=0)  # fixed cost of one call (Python, OpenMP fork/join)
    query_s: float = Field(ge=0)  # per query in the call (heap setup and merge)
    new_query_s: float = Field(ge=0)  # per query embedded and coarse-assigned in the call
    embed_call_s: float = Field(default=0.0, ge=0)  # per call that embeds at least one query (model call)
    # per token of padded query text, in the tokens of `index.embedder` (hwmodel.embedder_tokens):
    # the embedder pads a call's texts to the longest, so it runs new_queries x (longest text) tokens
    embed_token_s: float = Field(default=0.0, ge=0)
    embed_text_token_s: float = Field(default=0.0, ge=0)  # per token of the texts themselves (tokenizing)
    # a call that embeds after the lane sat idle runs cold: + cold_s x (1 - exp(-idle / cold_tau_s))
    cold_s: float = Field(default=0.0, ge=0)
    cold_tau_s: float = Field(default=0.02, gt=0)
    thread_bytes_per_s: float = Field(gt=0)  # scan rate of one thread
    memory_bytes_per_s: float = Field(gt=0)  # scan rate of all threads together (DRAM bound)

    @model_validator(mode="before")
    @classmethod
    def _not_per_character(cls, data: object) -> object:
        if isinstance(data, dict):
            for old in ("embed_char_s", "embed_text_char_s"):
                if old in data:
                    raise ValueError(f"{old}: a profile from an older hedra, which priced the query embedding per"
                                     " character; it is priced per token now: recalibrate (hedra calibrate)")
        return data

    @property
    def prices_text(self) -> bool:
        """Whether a call's cost depends on its query texts' token counts."""
        return bool(self.embed_token_s or self.embed_text_token_s)

    @property
    def embed_call_tokens(self) -> float:
        """A model call's own cost in padded tokens (embed_call_s / embed_token_s): where the bodies
        cut a call's new texts into model calls (`ragraph.work.embed_groups`); inf (one call) where
        padded tokens cost nothing."""
        return self.embed_call_s / self.embed_token_s if self.embed_token_s else math.inf


class TransferModel(_Strict):
    """A copy or a GPU scan: latency_s + bytes / bytes_per_s."""

    latency_s: float = Field(ge=0)
    bytes_per_s: float = Field(gt=0)


class Dispatch(_Strict):
    """Time a lane spends between two items when it has more work: the scheduler core's own
    work (`complete`, `next_work`) around each item. Measured on the real body, whose core is
    Python; 0 in an analytic profile (a compiled scheduler's cost sits inside the step). The
    core completes an engine step sequence by sequence, so the engine lane's gap grows with
    the sequences the step ran (`gen_dispatch_s`)."""

    gpu_gen_s: float = Field(default=0.0, ge=0)
    gpu_gen_seq_s: float = Field(default=0.0, ge=0)  # per sequence the step before the gap ran
    cpu_retrieval_s: float = Field(default=0.0, ge=0)

    def gen_dispatch_s(self, running: int) -> float:
        """The engine lane's gap after a step that ran `running` sequences."""
        return self.gpu_gen_s + self.gpu_gen_seq_s * running


class Contention(_Strict):
    """How much a rig's two lanes slow each other where their items overlap in time: an engine
    step runs `gen_step_slowdown` longer (a fraction of its time alone) over the part of it that
    overlaps a CPU search call, a CPU search call `cpu_search_slowdown` longer over the part that
    overlaps an engine step (`hwmodel.latency.contended_s`). On a CPU rig both lanes share the
    chip's caches and memory; measured by `hedra calibrate` (cells timed alone, then beside the
    other lane); 0 in an analytic profile."""

    gen_step_slowdown: float = Field(default=0.0, ge=0)
    cpu_search_slowdown: float = Field(default=0.0, ge=0)


class ProbeReference(_Strict):
    """What the stale-profile probe (`calibration.staleness`) measured right after the
    calibration: its items' measured time over their price, per kind. The fit's own bias on the
    probe's few shapes (a few percent), which a later probe's speed is divided by, so that the
    speed it reports is the machine's against the calibration's minute, not the fit's error."""

    engine_step: float = Field(gt=0)
    search_call: float = Field(gt=0)


class Profile(_Strict):
    name: str
    version: int = Field(ge=1)
    kind: Literal["analytic", "measured"]
    description: str = ""
    software: dict[str, str] = Field(default_factory=dict)
    hardware: Hardware
    model: LLM
    index: Index
    engine: Engine
    gen_step: GenStepModel
    cpu_search: SearchModel
    gpu_search: TransferModel | None = None  # None: no GPU-resident index (a CPU rig)
    pcie: TransferModel | None = None
    dispatch: Dispatch = Field(default_factory=Dispatch)
    contention: Contention = Field(default_factory=Contention)
    probe: ProbeReference | None = None  # measured by `hedra calibrate`; None: a probe's speed is taken as is
    fits: dict[str, dict[str, object]] = Field(default_factory=dict)  # per model: coefficients, held-out error
    measurements: list[dict[str, float | int | str]] = Field(default_factory=list)  # raw data (measured)

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.kv_capacity_blocks() < 1:
            if self.engine.kv_cache_gib is not None:
                raise ValueError("engine.kv_cache_gib: smaller than one KV block")
            if self.hardware.gpu_memory_gib is None:
                raise ValueError("engine.kv_cache_gib: required when hardware.gpu_memory_gib is not given")
            raise ValueError("engine: no GPU memory left for the KV cache after weights, activations"
                             " and index cache")
        host = self.engine.host_kv_gib
        if host:
            mem = self.hardware.host_memory_gib
            if mem is None:
                raise ValueError("engine.host_kv_gib: requires hardware.host_memory_gib (the machine's memory)")
            if host > mem:
                raise ValueError(f"engine.host_kv_gib: {host:g} GiB is more than the machine's memory"
                                 f" (hardware.host_memory_gib {mem:g} GiB)")
            if self.pcie is None:
                raise ValueError("engine.host_kv_gib: requires pcie (the link the copies take)")
        sizes = self.index.list_sizes
        if sizes is not None and (len(sizes) != self.index.nlist or sum(sizes) != self.index.ntotal):
            raise ValueError("index.list_sizes: must have nlist entries summing to ntotal")
        if self.index.ntotal < self.index.nlist:
            raise ValueError("index.ntotal: fewer vectors than lists")
        if self.cpu_search.prices_text and not self.index.embedder:
            raise ValueError("index.embedder: required when cpu_search prices the query embedding per token"
                             " (whose tokens it counts)")
        return self

    def on_index(self, index: Index) -> Profile:
        """This profile describing another index (its costs unchanged; checked again)."""
        return type(self).model_validate({**self.model_dump(), "index": index.model_dump()})

    def at_speed(self, engine: float, search: float) -> Profile:
        """This profile for the same machine running slower or faster: every engine step costs
        `engine` times its price here, every CPU search call `search` times (the core's own work
        and the lanes' contention as they are). Validation's view of a real run at the speed its
        items ran (`calibration.validate`)."""
        return self.model_copy(update={"gen_step": _time_scaled(self.gen_step, engine),
                                       "cpu_search": _time_scaled(self.cpu_search, search)})

    def kv_capacity_blocks(self) -> int:
        """KV-cache blocks: `engine.kv_cache_gib` when set, else GPU memory x utilisation -
        weights - activations - index cache; divided by the bytes of one block."""
        e, gpu_gib = self.engine, self.hardware.gpu_memory_gib
        if e.kv_cache_gib is not None:
            free = e.kv_cache_gib * GIB
        elif gpu_gib is not None:
            free = (gpu_gib * e.gpu_memory_utilization - self.model.weights_gib
                    - e.activation_reserve_gib - e.index_cache_gib) * GIB
        else:
            return 0
        return int(free // (self.model.kv_bytes_per_token * e.block_size))


    def host_kv_blocks(self) -> int:
        """KV blocks the host-memory tier holds (`engine.host_kv_gib`; 0: no host tier)."""
        return int(self.engine.host_kv_gib * GIB // (self.model.kv_bytes_per_token * self.engine.block_size))


def _time_scaled(model: _Strict, factor: float) -> _Strict:
    """`model` with every cost in seconds (a field named `*_s`, not a time constant `*_tau_s`)
    times `factor` and every rate (`*_per_s`) divided by it."""
    update: dict[str, float] = {}
    for name in type(model).model_fields:
        if name.endswith("_per_s"):
            update[name] = getattr(model, name) / factor
        elif name.endswith("_s") and not name.endswith("_tau_s"):
            update[name] = getattr(model, name) * factor
    return model.model_copy(update=update)


def _field_path(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"]) or "(top level)"


def load_profile(name_or_path: str | Path | None = None) -> Profile:
    """Load a shipped profile by name, or a profile file by path; raises ProfileError."""
    if name_or_path is not None and not str(name_or_path).strip():
        raise ProfileError("--profile: empty profile name")
    ref = str(name_or_path or DEFAULT_PROFILE)
    path = Path(ref)
    if not path.suffix:
        path = PROFILE_DIR / f"{ref}.json"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.json")))
        raise ProfileError(f"{ref}: no such profile file (shipped profiles: {shipped})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ProfileError(f"{path}: field {_field_path(err)}: {err['msg']}") from None
