"""Entry-point helper shared by the command-line tools."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

_WORKER_HEAD = " in DataLoader worker process "


def worker_error_message(text: str) -> str | None:
    """The original message of an exception that torch re-raised from a DataLoader worker
    (``"Caught ValueError in DataLoader worker process 0.\\nOriginal Traceback ...
    \\nutil.nifti_io.NiftiError: <message>"`` -> ``"<message>"``); None for other text."""
    first, _, rest = text.partition("\n")
    if not first.startswith("Caught ") or _WORKER_HEAD not in first:
        return None
    lines = rest.rstrip("\n").splitlines()
    # the exception line(s) follow the last indented line of the traceback
    last_frame = max((i for i, line in enumerate(lines) if line.startswith(" ")), default=-1)
    tail = "\n".join(lines[last_frame + 1 :]).strip()
    name, sep, message = tail.partition(": ")
    if not sep or " " in name:
        return tail or None
    return message.strip() or None


def error_line(err: BaseException) -> str:
    """One line for a bad input or a failed write: the message (a DataLoader worker's original
    one where torch wrapped it), its first line only."""
    text = str(err)
    text = worker_error_message(text) or text
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def run_main(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s status; bad input (``ValueError``, ``FileNotFoundError``, or
    ``FileExistsError`` for an output a tool will not overwrite; their messages name the file
    or option) and failed reads/writes (any ``OSError``: read-only folder, full disk) become
    one ``error: ...`` line and exit status 2 instead of a traceback; an interrupt exits 130."""
    try:
        status = main()
    except (ValueError, OSError) as err:  # FileNotFoundError, FileExistsError are OSErrors
        print(f"error: {error_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status)
