"""The `hedra` command line: one module per command group, all on one typer app.

`common.py` holds the app and what every command shares (input errors as one line and exit
code 2, extra workflows, option parsing); `trace.py`, `corpus.py`, `whatif.py` (sim, list),
`studies.py` (demo, sweep, compare, figure), `real.py` (run, calibrate, validate),
`capacity.py` (capacity, on either body), `quality.py` (quality measure) and `model.py` add
their commands to it when imported here.
"""

from __future__ import annotations

import importlib
import os
import sys

from experiments.cli.common import app

# the command groups, in the order `hedra --help` lists them; importing one registers its commands
for _group in ("trace", "corpus", "whatif", "studies", "real", "capacity", "model", "quality"):
    importlib.import_module(f"experiments.cli.{_group}")

from experiments.cli.studies import bare_ray  # noqa: E402

__all__ = ["app", "main"]


# commands whose process ends at once when they succeed: their outputs are written and closed, and
# freeing the trace, the run and its timeline object by object (~0.15 s of a 3 s `hedra sim`) serves
# nobody; they start no worker, thread or pool that an exit handler would stop
EXIT_AT_ONCE = ("sim",)


def main() -> None:
    args = bare_ray(sys.argv[1:])
    try:
        app(args=args, prog_name="hedra")
    except SystemExit as exc:
        if not exc.code and args[:1] and args[0] in EXIT_AT_ONCE:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise
