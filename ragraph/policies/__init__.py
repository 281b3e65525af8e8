"""Scheduling policies: the contract (`base`), the spec grammar (`spec`), the policies, and
the registry (`registry`).

`from ragraph.policies import parse_policy` (or `POLICIES`, `make_policy`) loads the registry,
and with it every policy, on first use only: importing `ragraph.policies.base` (as the
scheduler core does) loads no policy.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["POLICIES", "Policy", "PolicyChoice", "PolicyError", "PolicyType", "make_policy", "parse_policy"]

_FROM = {"Policy": "base", "PolicyError": "base", "PolicyChoice": "spec", "PolicyType": "spec",
         "POLICIES": "registry", "make_policy": "registry", "parse_policy": "registry"}


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"ragraph.policies.{_FROM[name]}"), name)
