"""Files of extra workflows: TOML or JSON `[[workflow]]` tables (docs/workflows.md).

Read by `--workflows FILE` of the trace and run commands and by a sweep spec's
`workflow_files`; each table is validated as a `ragraph.workflows.WorkflowSpec`.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from pydantic import ValidationError

from ragraph.workflows import WorkflowError, WorkflowRegistry, WorkflowSpec


def read_workflows(path: Path) -> list[WorkflowSpec]:
    """The workflows a file defines, validated; raises WorkflowError naming the file and field."""
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise WorkflowError(f"{path}: cannot read workflows ({exc})") from None
    tables = data.get("workflow") if isinstance(data, dict) else None
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise WorkflowError(f"{path}: field workflow: expected a list of workflow tables ([[workflow]])")
    specs = []
    for i, raw in enumerate(tables):
        try:
            specs.append(WorkflowSpec.model_validate(raw))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise WorkflowError(f"{path}: workflow[{i}] field {field}: {err['msg']}") from None
    return specs


def load_workflows(path: Path | None) -> WorkflowRegistry:
    """Built-in workflows plus those in a TOML or JSON file ([[workflow]] tables)."""
    registry = WorkflowRegistry()
    for spec in read_workflows(path) if path is not None else []:
        registry.register(spec)
    return registry
