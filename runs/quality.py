"""summary.json `quality` of a simulated run whose policy chose synthesis configurations (RAGServe/METIS).

The simulator cannot answer a question, so the quality it reports is that of the
configurations its policy chose, looked up in each request's quality table (drawn from a
declared model for a synthetic trace, measured for a real one); the table's source is named
beside the mean, so a model's number is never read as a measurement. A run with no configured
request has no `quality` block (absent, never zero).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ragraph.graph import Request
from ragraph.records import RequestRecord


def configuration_quality(records: Sequence[RequestRecord], requests: Sequence[Request]) -> dict[str, object]:
    """{f1_mean, answered, failed, source, per_method} over the configured requests ({} if none).

    `f1_mean` is over completed requests with an F1; a failed request counts in `failed`, not as
    an F1 of 0."""
    configured = [r for r in records if r.synthesis]
    if not configured:
        return {}
    sources = sorted({r.synthesis.quality_source for r in requests if r.synthesis is not None
                      and r.synthesis.quality_source})
    scored = [r for r in configured if r.status == "completed" and not math.isnan(r.config_f1)]
    per_method: dict[str, dict[str, object]] = {}
    for method in sorted({r.synthesis for r in configured}):
        rows = [r for r in scored if r.synthesis == method]
        per_method[method] = {"requests": sum(r.synthesis == method for r in configured),
                              "f1_mean": sum(r.config_f1 for r in rows) / len(rows) if rows else None,
                              "num_chunks_mean": sum(r.num_chunks for r in rows) / len(rows) if rows else None}
    return {
        "f1_mean": sum(r.config_f1 for r in scored) / len(scored) if scored else None,
        "answered": len(scored),
        "failed": sum(r.status != "completed" for r in configured),
        "source": ", ".join(sources) or "none (the trace has no quality table)",
        "per_method": per_method,
    }
