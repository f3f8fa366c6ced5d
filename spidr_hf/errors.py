"""The error a command raises for a mistake of its user's (a bad option, input or file)."""

from __future__ import annotations


class UsageError(Exception):
    """A user's mistake: ``spidr-hf`` reports it as one line ``spidr-hf COMMAND: error: ...``, without a
    traceback, and exits with status 2 (as argparse's own errors)."""


__all__ = ["UsageError"]
