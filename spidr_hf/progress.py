"""Progress bars, one policy for every command: a tqdm bar on a terminal, a plain line every few
percent when stderr goes to a log file, nothing at all with ``--quiet``.

A bar redrawn in place is one line on a terminal but hundreds of ``\\r``-separated updates in a log
file, so off a terminal each refresh is written as a line of its own, and only every
:data:`LOG_STEP` of the total (every :data:`LOG_SECONDS` without a total).
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm
from tqdm.std import tqdm as plain_tqdm

LOG_STEP = 0.05
"""Fraction of the total between two progress lines in a log."""

LOG_SECONDS = 30.0
"""Seconds between two progress lines in a log when the total is unknown."""

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence every progress bar of this process (the commands' ``--quiet``)."""
    global _quiet
    _quiet = bool(quiet)


class LogLines(plain_tqdm):
    """A tqdm whose every refresh is a line of its own, refreshed every few percent (for log files)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        total = kwargs.get("total")
        if total:
            kwargs.update(miniters=total * LOG_STEP, mininterval=0)
        else:
            kwargs.update(mininterval=LOG_SECONDS)
        kwargs.update(maxinterval=float("inf"), ascii=True)  # the monitor thread would refresh every 10 s
        super().__init__(*args, **kwargs)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        """Keep the postfix for the next line instead of writing a line now."""
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    @staticmethod
    def status_printer(file: Any):
        """Write each status as a line; tqdm ends the last one itself when the bar closes."""
        started = False

        def print_status(status: str) -> None:
            nonlocal started
            file.write(("\n" if started else "") + status)
            file.flush()
            started = True

        return print_status


def progress_bar(total: float | None = None, *, disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar under the package's policy (``kwargs`` are tqdm's: ``desc``, ``unit``, ``bar_format`` ...)."""
    if _quiet or disable:
        return tqdm(total=total, disable=True, **kwargs)
    if sys.stderr.isatty():
        return tqdm(total=total, **kwargs)
    return LogLines(total=total, file=sys.stderr, **kwargs)


__all__ = ["LOG_SECONDS", "LOG_STEP", "LogLines", "progress_bar", "set_quiet"]
