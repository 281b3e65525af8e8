"""The `hedra` command line: one module per command group, all on one typer app.

`common.py` holds the app and what every command shares (input errors as one line and exit
code 2, extra workflows, option parsing); `trace.py`, `corpus.py`, `whatif.py` (sim, list),
`studies.py` (demo, sweep, compare, figure), `real.py` (run, calibrate, validate),
`capacity.py` (capacity, on either body), `quality.py` (quality measure) and `model.py` add
their commands to it when imported here.
"""

from __future__ import annotations

import importlib
import sys

from experiments.cli.common import app

# the command groups, in the order `hedra --help` lists them; importing one registers its commands
for _group in ("trace", "corpus", "whatif", "studies", "real", "capacity", "model", "quality"):
    importlib.import_module(f"experiments.cli.{_group}")

from experiments.cli.studies import bare_ray  # noqa: E402

__all__ = ["app", "main"]


def main() -> None:
    app(args=bare_ray(sys.argv[1:]), prog_name="hedra")
