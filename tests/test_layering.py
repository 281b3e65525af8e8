"""The packages form layers: no module imports from a package above its own.

Read from the source (every `import` and `from ... import`, at any depth, in a function or
under TYPE_CHECKING alike), so a lazy import cannot hide an arrow that runs back up.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# each package and the packages it may import (besides itself); a package's list is its layer's floor
ALLOWED: dict[str, set[str]] = {
    "ragraph": set(),
    "hwmodel": set(),
    "traces": {"ragraph"},
    "sim": {"ragraph", "hwmodel"},
    "backends": {"ragraph", "hwmodel", "traces"},
    "runs": {"ragraph", "hwmodel", "sim", "backends"},
    "calibration": {"ragraph", "hwmodel", "traces", "sim", "backends", "runs"},
    "experiments": {"ragraph", "hwmodel", "traces", "sim", "backends", "runs", "calibration"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


def test_no_package_imports_from_a_layer_above_it():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for dep in sorted(imported_packages(path) - allowed - {package}):
                wrong.append(f"{path.relative_to(ROOT)} imports {dep}")
    assert not wrong, "\n".join(wrong)


def test_the_core_and_the_policy_contract_load_without_the_registry():
    import subprocess
    import sys

    code = ("import sys, ragraph.core, ragraph.policies.base, ragraph.policies.spec; "
            "print(sorted(m for m in sys.modules if m.startswith('ragraph.policies')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "['ragraph.policies', 'ragraph.policies.base', 'ragraph.policies.spec']"
