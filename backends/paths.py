"""Where the real backend caches what it builds once: models and corpora."""

from __future__ import annotations

import os
from pathlib import Path


def hedra_home() -> Path:
    """$HEDRA_HOME, default ~/.cache/hedra."""
    return Path(os.environ.get("HEDRA_HOME") or Path.home() / ".cache" / "hedra")
