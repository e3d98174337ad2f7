"""Entry-point helper shared by the command-line tools."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


def run_main(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s status; bad input (``ValueError``, ``FileNotFoundError``, or
    ``FileExistsError`` for an output a tool will not overwrite; their messages name the file
    or option) becomes one ``error: ...`` line and exit status 2 instead of a traceback."""
    try:
        status = main()
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status)
