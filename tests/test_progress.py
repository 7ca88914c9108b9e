"""Progress bars: hidden when quiet, in CI and without a terminal; they still iterate."""

from __future__ import annotations

import io
import sys

import pytest

from mljax.progress import progress, progress_enabled


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize(
    "quiet, ci, tty, shown",
    [
        (False, "false", True, True),
        (True, "false", True, False),
        (False, "true", True, False),
        (False, "false", False, False),
    ],
)
def test_bar_shows_only_on_a_terminal_outside_ci_when_not_quiet(monkeypatch, quiet, ci, tty, shown):
    stream = _Tty() if tty else io.StringIO()
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(sys, "stderr", stream)
    assert progress_enabled(quiet) is shown
    bar = progress(range(5), desc="steps", quiet=quiet, file=stream)
    assert bar.disable is (not shown)
    assert list(bar) == [0, 1, 2, 3, 4]  # a hidden bar still iterates
    assert ("steps" in stream.getvalue()) is shown


def test_resumed_bar_counts_from_initial(monkeypatch):
    stream = _Tty()
    monkeypatch.setenv("CI", "false")
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress(total=10, initial=4, desc="train", file=stream, mininterval=0)
    bar.update(3)
    bar.refresh()
    assert "7/10" in stream.getvalue()
    bar.close()
