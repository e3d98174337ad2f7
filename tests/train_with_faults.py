"""``python tests/train_with_faults.py <train.py flags>``: train.py with a fault injected, for
the resume tests (never used by the product).

``FAULT=kill_in_save:N`` SIGKILLs the process right after the N-th checkpoint's temporary
file is written, before it is renamed into place (a kill mid-save);
``FAULT=kill_after_save:N`` right after the N-th checkpoint file is renamed into place (so an
epoch file is written and ``latest`` is not yet).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import train  # noqa: E402
from util.cli import run_main  # noqa: E402


def _kill_at(n: int):
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count == n:
            os.kill(os.getpid(), signal.SIGKILL)

    return tick


def install_fault(spec: str) -> None:
    kind, _, n = spec.partition(":")
    if not kind:
        return
    tick = _kill_at(int(n))
    if kind == "kill_in_save":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            tick()

        torch.save = save
    elif kind == "kill_after_save":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            if str(dst).endswith("_checkpoint.pth"):
                tick()

        os.replace = replace
    else:
        raise SystemExit(f"unknown FAULT {spec!r}")


if __name__ == "__main__":
    install_fault(os.environ.get("FAULT", ""))
    run_main(lambda: train.main(sys.argv[1:]))
