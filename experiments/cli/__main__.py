"""`python -m experiments.cli`: what the `hedra` console script runs."""

import sys

from experiments.cli import main

sys.exit(main())
