"""What a new user meets first: `hedra list`, the listing in `--help`, and error messages that
name what the user typed (the trace-gen option at fault, the `--out` path)."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from hwmodel.profile import DEFAULT_PROFILE
from ragraph.policies import POLICIES
from ragraph.workflows import BUILTIN_WORKFLOWS
from runs.outdir import OutputError, atomic_dir, atomic_file

ROOT = Path(__file__).resolve().parents[1]


def hedra(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_policies_with_options_workflows_and_profiles():
    text = hedra("--help").stdout
    for name in [*POLICIES, *BUILTIN_WORKFLOWS, DEFAULT_PROFILE]:
        assert name in text
    assert "substages=dynamic" in text and "budget-factor" in text  # hedra's options
    assert "hedra list" in text


def test_list_commands():
    policies = hedra("list", "policies")
    assert policies.returncode == 0
    for name, ptype in POLICIES.items():
        assert f"{name}: {ptype.summary}" in policies.stdout
    assert "substages: dynamic|fixed|off = dynamic" in policies.stdout
    workflows = hedra("list", "workflows").stdout
    assert all(f"{w}: " in workflows for w in BUILTIN_WORKFLOWS)
    assert f"{DEFAULT_PROFILE}: analytic" in hedra("list", "profiles").stdout
    bad = hedra("list", "things")
    assert bad.returncode == 2 and "hedra list things" in bad.stderr


@pytest.mark.parametrize(("extra", "named"), [
    (("--rate", "inf"), "--rate inf"), (("--rate", "-2"), "--rate -2"), (("--duration", "0"), "--duration 0"),
    (("--k", "0"), "--k 0"), (("--nprobe", "5000"), "--nprobe 5000"), (("--overlap", "1.5"), "--overlap 1.5"),
    (("--arrival", "gamma", "--cv", "0"), "--cv 0"), (("--zipf", "nan"), "--zipf nan"),
    (("--arrival", "burst"), "--arrival burst"),
])
def test_trace_gen_names_the_wrong_option(tmp_path, extra, named):
    out = tmp_path / "t.jsonl"
    proc = hedra("trace", "gen", "--workflow", "irg", "--rate", 2, "--duration", 10, "--out", out, *extra)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"hedra: error: {named}:"), proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("command", ["sim", "trace", "figure"])
def test_out_under_a_file_names_the_out_path(tmp_path, command):
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "run"
    args = {"sim": ("sim", "--trace", tmp_path / "t.jsonl", "--policy", "hedra"),
            "trace": ("trace", "gen", "--workflow", "irg", "--rate", 2, "--duration", 5),
            "figure": ("figure", 16, "--quick")}[command]
    proc = hedra(*args, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"hedra: error: {out}:") and "is a file, not a folder" in proc.stderr


def test_write_errors_name_the_out_path_not_the_temporary(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(OutputError) as err, atomic_dir(out) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "requests.parquet"))
    assert str(err.value) == f"{out}: cannot write: No space left on device"
    assert not out.exists() and not list(tmp_path.iterdir())
    path = tmp_path / "p.json"
    with pytest.raises(OutputError) as err, atomic_file(path) as tmp:
        raise OSError(errno.EIO, "Input/output error", str(tmp))
    assert str(err.value).startswith(f"{path}: cannot write") and ".tmp-" not in str(err.value)
    with pytest.raises(OSError, match="unrelated"), atomic_dir(out):  # other files' errors pass unchanged
        raise OSError(errno.ENOENT, "unrelated", "/elsewhere/file")


def test_corpus_build_progress_as_messages():
    from backends.corpus.index import progress_bar as _bar

    seen: list[str] = []
    with _bar(1000, "embedding passages", seen.append) as bar:
        bar.update(512)
        bar.update(488)
    assert seen == ["embedding passages: 0/1,000 passages", "embedding passages: 512/1,000 passages",
                    "embedding passages: 1,000/1,000 passages"]
