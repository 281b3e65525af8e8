"""What every `hedra` command shares: the app, input errors as one line and exit code 2,
extra workflows, option parsing.

Bad input (unknown policy or workflow, malformed trace, missing or inconsistent profile,
impossible option) prints one line `hedra: error: ...` naming file, line and field where
there is one, exits with code 2 and writes nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from experiments.listing import help_epilog
from hwmodel.profile import ProfileError
from ragraph.kvpolicy import KVPolicyError
from ragraph.policies import PolicyError
from ragraph.workflows import WorkflowError
from runs.outdir import OutputError
from traces.questions import DatasetError
from traces.schema import TraceError

app = typer.Typer(help="Hedra: RAG serving policies, simulated and real.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, epilog=help_epilog())



class UsageError(ValueError):
    """An option value that cannot work."""


# Input errors of the real backend's modules, looked up only where the module was imported: the
# simulator's commands never import them (they are slow to import), and so cannot raise them.


_BACKEND_ERRORS = {"backends.corpus.store": ("CorpusError",), "backends.real": ("BackendError",),
                   "backends.embedder": ("EmbedderUnavailable",), "backends.ivf": ("RetrieverUnavailable",),
                   "backends.vllm_engine": ("ModelLoadError",),
                   "backends.vllm_handles": ("EngineUnavailable", "VLLMHandleError"),
                   "backends.smollm2": ("ModelUnavailable",)}


def _input_errors() -> tuple[type[Exception], ...]:
    backend = tuple(getattr(sys.modules[module], name) for module, names in _BACKEND_ERRORS.items()
                    if module in sys.modules for name in names)
    return (TraceError, DatasetError, ProfileError, PolicyError, KVPolicyError, WorkflowError, UsageError,
            OutputError, *backend)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn input errors into one stderr line and exit code 2."""
    try:
        yield
    except _input_errors() as exc:
        typer.echo(f"hedra: error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # e.g. an output path under a regular file, or no permission
        where = exc.filename or ""
        typer.echo(f"hedra: error: {where}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None


WorkflowsOpt = Annotated[Path | None, typer.Option("--workflows", help="TOML/JSON file of extra workflows.")]


def option_error(exc: ValidationError) -> UsageError:
    """A validated options model's first error, named as the command-line option."""
    err = exc.errors()[0]
    return UsageError(f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}")


def parse_cores(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated core numbers, e.g. 0 or 1,2") from None


def parse_rates(text: str | None) -> list[float]:
    try:
        rates = [float(r) for r in (text or "").split(",") if r.strip()]
    except ValueError:
        raise UsageError(f"--rates {text!r}: expected comma-separated numbers, e.g. 1,2,4") from None
    for r in rates:
        if not (0 < r < 1e4):
            raise UsageError(f"--rates {text!r}: each rate must be > 0 and finite")
    return rates


def rate_of(requests) -> float:
    span = max(r.arrival_s for r in requests) - min(r.arrival_s for r in requests)
    return round((len(requests) - 1) / span, 2) if span > 0 else float(len(requests))


def measured_space_note(summary: dict) -> str:
    """"; ragserve chose among the N measured configurations (SOURCE)" for a run whose policy's
    space was restricted to a measured quality table's configurations; "" otherwise."""
    rs = summary.get("ragserve")
    space = rs.get("measured_space") if isinstance(rs, dict) else None
    if not isinstance(space, dict):
        return ""
    outside = f", none in the ranges of {space['outside_ranges']}" if space["outside_ranges"] else ""
    return (f"; ragserve chose among the {len(space['configurations'])} measured configurations"
            f" ({', '.join(space['sources'])}{outside})")
