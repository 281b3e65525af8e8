"""Compiled hot modules (mypyc, Cython): how much faster the simulator runs, measured before choosing.

Issue 17 allows compiled code in hot modules if a pure-Python path stays, results stay the same
and the README's two commands stay as they are; this measures what it would buy. It copies the
packages into a scratch folder (never builds in the source tree), compiles the hot modules
there, and times `Simulation.run()` of `sim_speed.py`'s irg case (300 s at 12 req/s, seed 0)
under `flashrag` and `hedra` in child processes: the pure modules (this tree on `PYTHONPATH`),
then the compiled ones (the scratch folder first on `PYTHONPATH`); CPU seconds, the median of
`--repeats` runs, and a digest of every request record, which must be the same both ways.

    python benchmarks/compiled_speed.py [--compiler mypyc|cython] [--repeats 3] [--keep DIR]

mypyc (`pip install mypy`) compiles MYPYC_MODULES: the scheduler core, the techniques, the engine
model, the executor and the latency model. The build copy marks the two RuntimeError subclasses
(`ragraph.core.LaneBusy`, `ragraph.state.IllegalTransition`) `@mypyc_attr(native_class=False)`:
mypyc cannot compile a native subclass of RuntimeError, and the sources do not import
mypy_extensions. Left out: `ragraph.policies.base` (the policies, pydantic options and all,
subclass `Policy`: an interpreted class cannot inherit from a compiled one), the pydantic
modules, and `ragraph.records` (a compiled dataclass's annotations no longer resolve to the
types `runs.outputs` reads its columns from). The sources needed only type-level changes
(mypyc checks annotations at run time; mypy had to pass on these modules): see the commit
"type-level fixes so mypy passes on the hot modules". Cython 3 (`pip install cython`) compiles
every module of ragraph, sim and hwmodel.latency without type declarations, pydantic modules left out.

Measured 2026-12-05 on the 2-core machine (load average 1.5-5, shared; CPU seconds, medians of 3,
pure and compiled in the same session), mypy 2.4.1 / Cython 3.3.1, Python 3.11.7:

    hedra     pure 1.94-2.11 CPU s (143-155x real time)   mypyc 1.35-1.49 (202-224x): 1.42-1.50x
    flashrag  pure 0.337-0.365 (863-936x)               mypyc 0.253-0.291 (1082-1243x): 1.25-1.33x
    Cython, three builds: hedra 1.05-1.27x, flashrag 0.99-1.08x

(mypyc: a scratch build, then this script at load average ~5; Cython: 1.27x from a scratch build
that also compiled `ragraph.records`, 1.05x and 1.11x from this script at load average 5-6.)
Again after the numpy heat table (`sim.heat_numpy`) and a rebase on main 1d2dba5, load average
1.3-2.8: hedra pure 1.887 CPU s (160x), mypyc 1.216 (248x): 1.55x; flashrag 0.389 (810x),
mypyc 0.273 (1152x): 1.42x; records the same.

Every record identical both ways, and `benchmarks/same_outputs.py --quick` (48 cells) on the
mypyc build against the pure one: 48 of 48 cells the same; the tests of the core, engine model,
GPU cache, KV order, techniques, step folding, prefix tree and host tier pass on the mypyc build.

Why not more: a cProfile of the pure hedra run puts ~17% of its time in C builtins already
(sorted, Counter, set operations, heapq), ~6.5% in SimPy (not ours to compile) and the rest
spread over ~20 modules that handle dicts, sets, tuples and dataclass instances, where mypyc's
native code saves the interpreter's dispatch but not the object work. 1.5x on hedra leaves the
in-process figure at ~220x against the 1000x goal; compiled code would also need a C compiler and
mypy at install time (`pip install -e` on a fresh clone builds nothing today) and a guard against a
stale compiled module shadowing an edited source. Below the ~2x that would justify that
machinery, so it is not shipped; the design, if a later change makes it pay: build into a cache
folder keyed by the hash of the compiled sources (and the Python version), load it only when the
hash matches the current sources (an import hook or a `sys.path` entry added by `sim/__init__`),
with an environment variable forcing pure Python, and the tests run both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ragraph", "sim", "hwmodel", "traces")  # copied whole: a package comes from one folder
MYPYC_MODULES = (
    "ragraph/core.py", "ragraph/graph.py", "ragraph/work.py", "ragraph/runtime.py", "ragraph/state.py",
    "ragraph/view.py", "ragraph/kvpolicy.py", "ragraph/costs.py", "ragraph/synthesis.py",
    "ragraph/techniques/__init__.py", "ragraph/techniques/gpu_cache.py", "ragraph/techniques/reorder.py",
    "ragraph/techniques/spec_gen.py", "ragraph/techniques/spec_retr.py", "ragraph/techniques/substages.py",
    "ragraph/techniques/wavefront.py", "sim/executor.py", "sim/gen_engine.py", "sim/block_pool.py",
    "sim/host_tier.py", "sim/kv_order.py", "hwmodel/latency.py",
)
NON_NATIVE = {"ragraph/core.py": "LaneBusy", "ragraph/state.py": "IllegalTransition"}
PYDANTIC = tuple(f"ragraph/{m}.py" for m in (  # Cython: left out (pydantic reads their class bodies)
    "workflows", "policies/configured", "policies/flashrag", "policies/hedra", "policies/langchain",
    "policies/ragserve", "policies/spec"))


def build_mypyc(dest: Path) -> None:
    for rel, cls in NON_NATIVE.items():
        p = dest / rel
        src = p.read_text()
        src = src.replace("from __future__ import annotations\n",
                          "from __future__ import annotations\n\nfrom mypy_extensions import mypyc_attr\n", 1)
        p.write_text(src.replace(f"\nclass {cls}(", f"\n@mypyc_attr(native_class=False)\nclass {cls}(", 1))
    mypyc = Path(sys.executable).with_name("mypyc")
    if not mypyc.exists():
        sys.exit("mypyc is not installed in this Python: pip install mypy")
    subprocess.run([str(mypyc), "--ignore-missing-imports", "--follow-imports=silent", *MYPYC_MODULES],
                   cwd=dest, check=True, capture_output=True)


def build_cython(dest: Path) -> None:
    try:
        import Cython  # noqa: F401
    except ImportError:
        sys.exit("Cython is not installed in this Python: pip install cython")
    mods = [str(p.relative_to(dest)) for pkg in ("ragraph", "sim") for p in (dest / pkg).rglob("*.py")
            if p.name != "__init__.py" and not str(p.relative_to(dest)).startswith(PYDANTIC)]
    (dest / "setup_cy.py").write_text(
        "from Cython.Build import cythonize\nfrom setuptools import setup\n"
        f"setup(ext_modules=cythonize({[*mods, 'hwmodel/latency.py']!r}, language_level=3, quiet=True))\n")
    subprocess.run([sys.executable, "setup_cy.py", "build_ext", "--inplace"], cwd=dest, check=True,
                   capture_output=True)


def child(repeats: int) -> None:
    """In the child: time the runs, print one JSON line."""
    import hashlib
    import time

    import ragraph.core
    from hwmodel.latency import LatencyModel
    from hwmodel.profile import load_profile
    from ragraph.policies import make_policy
    from sim.executor import Simulation
    from traces.generate import TraceConfig, generate_trace, write_jsonl
    from traces.schema import load_trace

    profile = load_profile()
    latency = LatencyModel(profile)
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "irg.jsonl"
        write_jsonl(generate_trace(TraceConfig(("irg",), 12.0, 300.0, seed=0)), path)
        requests = load_trace(path, nlist=profile.index.nlist)
    out: dict[str, object] = {"core": ragraph.core.__file__}
    for policy in ("flashrag", "hedra"):
        cpus = []
        for _ in range(repeats):
            cpu = time.process_time()
            run = Simulation(requests, make_policy(policy, latency), latency).run()
            cpus.append(time.process_time() - cpu)
        digest = hashlib.sha256(repr(run.records).encode()).hexdigest()[:16]
        out[policy] = {"cpu_s": statistics.median(cpus), "runs": cpus, "sim_s": run.sim_s, "records": digest}
    print(json.dumps(out))


def measure(pythonpath: str, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    proc = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(repeats)], env=env,
                          check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compiler", choices=("mypyc", "cython"), default="mypyc")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="build here and keep it (default: a temporary folder)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.repeats)
        return
    with tempfile.TemporaryDirectory() as name:
        dest = args.keep or Path(name)
        shutil.rmtree(dest, ignore_errors=True)
        for pkg in PACKAGES:
            shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        (build_mypyc if args.compiler == "mypyc" else build_cython)(dest)
        pure = measure(str(ROOT), args.repeats)
        compiled = measure(f"{dest}{os.pathsep}{ROOT}", args.repeats)
    print(f"load average {os.getloadavg()[0]:.2f}; pure core {pure['core']}; compiled core {compiled['core']}")
    same = True
    for policy in ("flashrag", "hedra"):
        p, c = pure[policy], compiled[policy]
        same &= p["records"] == c["records"]
        print(f"  {policy:8s}: pure {p['cpu_s']:.3f} CPU s ({p['sim_s'] / p['cpu_s']:.0f}x real time),"
              f" {args.compiler} {c['cpu_s']:.3f} ({c['sim_s'] / c['cpu_s']:.0f}x): {p['cpu_s'] / c['cpu_s']:.2f}x;"
              f" records {'the same' if p['records'] == c['records'] else 'DIFFERENT'}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
