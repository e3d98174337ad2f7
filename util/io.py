"""Atomic file writes: a crash mid-write never destroys the last good file or leaves half a
report, and a write that fails (read-only folder, full disk) is one error naming the path.

Temporary files and folders are named ``.<name>.<pid>-<random>.tmp`` beside their target,
so that :func:`remove_orphaned_temps` can recognise those left behind by a killed process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Temporary names of :func:`atomic_path` / :func:`staged_dir` (NIfTI temps add their suffix).
#: Group 1 is the writer's pid (absent in files of older versions: ``.<name>.<random>.tmp``).
TEMP_PATTERN = re.compile(r"^\..+?\.(?:(\d+)-)?[A-Za-z0-9_-]+\.tmp(?:\.nii(?:\.gz)?)?$")


class OutputError(OSError):
    """An output could not be written (read-only folder, full disk...); the message names it."""


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def output_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """``exc`` as one :class:`OutputError` line naming ``path`` (errno kept)."""
    err = OutputError(f"cannot write {path}: {exc.strerror or exc or type(exc).__name__}")
    err.errno = exc.errno
    return err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary file lives in the same folder, so the final ``os.replace`` is atomic on
    POSIX and Windows. On an exception the temporary file is removed and ``path`` is untouched;
    an ``OSError`` (here or in the caller's writing) becomes :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent
        )
        os.close(fd)
        # mkstemp creates the file 0600; give the result the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
    except OSError as exc:
        raise output_error(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OutputError:
        raise
    except OSError as exc:
        raise output_error(path, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``.

    Everything written into the folder appears at ``path`` at once (a previous ``path`` is
    moved aside, then removed), so a run that fails halfway leaves the previous results (or
    nothing), never half a report. On an exception the folder is removed, and so are the
    parent folders this call created. Temporary folders of dead processes beside ``path`` are
    removed first.
    """
    path = Path(path)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphaned_temps(path.parent, only_dead=True, recursive=False)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
        )
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        raise output_error(path, exc) from exc
    try:
        yield tmp
        old = tmp.with_name(tmp.name.removesuffix(".tmp") + "-old.tmp")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        # name the file where it was going to be, not its temporary folder
        message = str(exc) if isinstance(exc, OutputError) else str(output_error(path, exc))
        err = OutputError(message.replace(str(tmp), str(path)))
        err.errno = exc.errno
        raise err from exc
    finally:
        if tmp.exists():  # failed: leave no trace
            shutil.rmtree(tmp, ignore_errors=True)
            for folder in created:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_orphaned_temps(
    folder: str | os.PathLike, *, only_dead: bool = False, recursive: bool = True
) -> tuple[int, int]:
    """Remove temporary files/folders of interrupted writes (:data:`TEMP_PATTERN`) in
    ``folder``; with ``only_dead`` only those whose writer's pid is not running (and none of
    another live process). Returns ``(count, bytes)`` removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0, 0
    entries = folder.rglob(".*") if recursive else folder.glob(".*")
    count = size = 0
    for entry in sorted(entries, key=lambda p: len(p.parts)):
        match = TEMP_PATTERN.match(entry.name)
        if not match or not entry.exists():
            continue
        pid = match.group(1)
        if only_dead and pid is not None and (int(pid) == os.getpid() or _pid_alive(int(pid))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                size += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                shutil.rmtree(entry)
            else:
                size += entry.stat().st_size
                entry.unlink()
            count += 1
    return count, size


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def read_json_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when the file is missing or not a valid JSON
    object (a resume record that cannot be trusted is treated as absent)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None
