"""Output folders that appear whole or not at all, and never replace anything else.

Every folder Hedra writes holds a marker file; an existing `--out` is replaced only if it
has that marker (an earlier Hedra output), so a mistyped `--out` cannot delete user data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = ".hedra-output"


class OutputError(ValueError):
    """An output path that Hedra will not write to."""


def _check_parents(out: Path) -> None:
    """Refuse an output path under a regular file, naming both."""
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{out}: {parent} is a file, not a folder (choose another --out)")
            return


def check_output_dir(out_dir: str | Path) -> Path:
    """Refuse an `out_dir` that exists and is not an earlier Hedra output folder, or that
    lies under a regular file."""
    out = Path(out_dir)
    _check_parents(out)
    if out.exists() and not (out.is_dir() and (out / MARKER).is_file()):
        raise OutputError(f"{out}: exists and is not a hedra output folder (remove it or choose another --out)")
    return out


def check_output_file(path: str | Path) -> Path:
    """Refuse an output file path that is a folder or lies under a regular file."""
    path = Path(path)
    _check_parents(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; --out takes a file name")
    return path


@contextmanager
def output_errors(out: str | Path) -> Iterator[None]:
    """Report an OSError on `out`, inside it, or on a temporary beside it as an OutputError
    naming `out` (the path the user typed), never the temporary; other OSErrors pass."""
    out = Path(out)
    try:
        yield
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else None
        chain = (where, *where.parents) if where is not None else ()
        if where is not None and not any(p == out or p.name.startswith(f".{out.name}.") for p in chain):
            raise
        raise OutputError(f"{out}: cannot write: {exc.strerror or exc}") from exc


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir` (which must
    be absent or an earlier Hedra output), on any error it is removed and `out_dir` is left
    as it was."""
    out = check_output_dir(out_dir)
    with output_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a result folder is not
        try:
            yield tmp
            (tmp / MARKER).write_text("written by hedra; this folder is replaced by the next run with the same --out\n")
            check_output_dir(out)
            if out.exists():
                shutil.rmtree(out)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success it is renamed to `path`, on any
    error removed, so `path` never holds a half-written file."""
    path = check_output_file(path)
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
