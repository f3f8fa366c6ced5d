"""The error a command raises for a mistake of its user's (a bad option, input or file)."""

from __future__ import annotations


class UsageError(Exception):
    """A user's mistake: ``spidr-hf`` reports it as one line ``spidr-hf COMMAND: error: ...``, without a traceback.

    ``exit_status`` is the process's exit status (2, as argparse's own errors).
    """

    def __init__(self, message: str, exit_status: int = 2) -> None:
        super().__init__(message)
        self.exit_status = exit_status


__all__ = ["UsageError"]
