"""util/cli.py: bad input is one 'error:' line and exit status 2; bugs keep their traceback."""

from __future__ import annotations

import pytest

from util.cli import run_main


def _raise(exc: Exception):
    def main() -> int:
        raise exc

    return main


@pytest.mark.parametrize(
    "exc",
    [ValueError("--x must be > 0"), FileNotFoundError("no a.json"), FileExistsError("b exists")],
)
def test_bad_input_is_one_error_line_and_status_2(exc, capsys):
    with pytest.raises(SystemExit) as stop:
        run_main(_raise(exc))
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: {exc}\n"


def test_status_passes_through_and_bugs_keep_their_traceback():
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: 1)
    assert stop.value.code == 1
    with pytest.raises(KeyError):
        run_main(_raise(KeyError("bug")))
