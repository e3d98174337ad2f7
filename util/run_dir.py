"""Protection of a run directory (``<checkpoints_dir>/<name>``) while a training writes to it.

* **One writer**: :class:`RunDir` holds ``run.lock`` (an exclusive ``flock``, plus the holder's
  pid, host, start time and command in the file). A second process refuses to start, naming
  the holder; a lock left by a process that died (``kill -9``, power cut) is free again and is
  taken over with a warning naming the dead holder.
* **No silent mix of two runs**: a new run (neither ``--continue_train`` nor ``--overwrite``)
  refuses a directory that already holds a run; ``--overwrite`` removes that run's files first.
* **No orphans**: temporary files of interrupted saves are removed at the start.
* **Graceful stop**: :class:`StopSignals` turns SIGTERM/SIGINT into a flag that the training
  loop checks between iterations, so that it can save ``latest`` and exit cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from util.io import remove_orphaned_temps

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: fall back to the pid check
    fcntl = None

LOCK_FILE = "run.lock"
#: What a training writes into its run directory (``--overwrite`` removes these).
RUN_FILES = ("*_checkpoint.pth", "loss_log.txt", "train_opt.txt", "train_opt.json")
RUN_FILES += ("best_metrics.json", "test_opt.txt", "test_opt.json", "web")


class RunDirError(ValueError):
    """The run directory is locked by another process or already holds another run."""


def _holder_text(info: dict[str, Any]) -> str:
    started = info.get("started")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}{when}"


def _read_info(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _alive_here(info: dict[str, Any]) -> bool:
    """Whether the holder named in ``info`` may still run (a pid on another host may)."""
    if info.get("host") != socket.gethostname():
        return bool(info)
    try:
        os.kill(int(info.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError):
        return False
    except OSError:
        return True
    return True


class RunDir:
    """``with RunDir(path, resume=..., overwrite=...):`` lock, tidy and check a run directory.

    On entry: create ``path``, take the lock (``RunDirError`` naming the holder if another
    process has it), remove orphaned temporary files, then refuse (``RunDirError``) a
    directory that holds another run unless ``resume`` or ``overwrite`` (which removes the
    :data:`RUN_FILES` first). On exit: release the lock, and remove ``path`` again if this
    run created it (and its parents) and left nothing in it.
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool, overwrite: bool = False) -> None:
        if resume and overwrite:
            raise ValueError("--continue_train and --overwrite contradict each other; pick one")
        self.path = Path(path)
        self.resume, self.overwrite = resume, overwrite
        self.lock_path = self.path / LOCK_FILE
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> RunDir:
        self._created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            count, size = remove_orphaned_temps(self.path)
            if count:
                print(
                    f"removed {count} temporary file(s) ({size / 2**20:.1f} MB) of an "
                    f"interrupted save in {self.path}"
                )
            self._check_contents()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    # ------------------------------------------------------------------ lock
    def _acquire(self) -> None:
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                elif _alive_here(_read_info(fd)):  # pragma: no cover - no flock
                    raise BlockingIOError
            except BlockingIOError:
                holder = _read_info(fd)
                os.close(fd)
                raise RunDirError(
                    f"{self.path} is in use by {_holder_text(holder)} "
                    f"({holder.get('command', 'another run')}); wait for it to finish, or "
                    "choose another --name"
                ) from None
            try:  # the previous holder may have removed the file between our open and lock
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read_info(fd)
        if old:
            print(
                f"warning: taking over the lock of {self.path} from {_holder_text(old)}, which "
                "is no longer running (it was killed or its machine went down)",
                file=sys.stderr,
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500],
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode("utf-8"))
        os.fsync(fd)
        self._fd = fd

    def _release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.lock_path.unlink()
        os.close(self._fd)
        self._fd = None
        for folder in self._created:  # deepest first, only when empty
            with contextlib.suppress(OSError):
                folder.rmdir()

    # ------------------------------------------------------------------ contents
    def _check_contents(self) -> None:
        others = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE)
        if not others or self.resume:
            return
        if not self.overwrite:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise RunDirError(
                f"{self.path} already holds a run ({shown}); pass --continue_train to resume "
                "it, --overwrite to replace it, or choose another --name"
            )
        removed = 0
        for pattern in RUN_FILES:
            for entry in self.path.glob(pattern):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed += 1
        kept = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE)
        note = f"; kept files it did not write: {', '.join(kept)}" if kept else ""
        print(f"--overwrite: removed {removed} file(s) of the previous run in {self.path}{note}")


class StopSignals:
    """``with StopSignals() as stop:`` SIGTERM and SIGINT set ``stop.signal_name`` instead of
    killing the process; the caller checks :attr:`requested` at safe points. A second signal
    raises ``KeyboardInterrupt`` at once (atomic saves keep the files whole). The previous
    handlers are restored on exit. Outside the main thread it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.exit_code = 0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        print(
            f"\n{self.signal_name} received: saving latest_checkpoint.pth after this iteration, "
            "then stopping (send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def note(self, signum: int) -> None:
        """Record ``signum`` as if received (another process of the job received it), unless a
        signal was already recorded."""
        if not self.requested:
            self.signal_name = signal.Signals(signum).name
            self.exit_code = 128 + signum

    def __enter__(self) -> StopSignals:
        with contextlib.suppress(ValueError):  # not the main thread
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def shield_from_stop_signals() -> None:
    """In a helper process (a DataLoader worker): leave SIGINT and SIGTERM to the main process,
    which stops cleanly and then ends its helpers.

    A scheduler's SIGTERM reaches every process of the job, and a worker killed by it would
    make torch raise in the main process (possibly mid-save). So SIGINT is ignored, and a
    SIGTERM ends the worker only when it comes from its parent (``multiprocessing`` ending it)
    or after the parent is gone; any other sender's is ignored. Where the platform cannot tell
    the sender (no ``sigwaitinfo``), SIGTERM keeps its default action.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # pragma: no cover - not Linux
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def watch() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent or os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="stop-signal-watch", daemon=True).start()
