"""Sub-commands of the ``spidr-hf`` CLI (see :mod:`spidr_hf.cli`), and the conventions they share.

* flags are kebab-case (``--output-dir``); their snake_case spelling (``--output_dir``) is accepted
  too, as transformers' ``HfArgumentParser`` accepts both for ``pretrain``;
* every command takes ``--quiet`` (no progress bars, warnings only) and ``--debug`` (a traceback
  instead of the one-line error; ``SPIDR_HF_DEBUG=1`` does the same);
* one error path: a command raises :class:`~spidr_hf.errors.UsageError` (or one of the exception
  types it declares as user mistakes) and :func:`command` prints ``spidr-hf NAME: error: ...``;
* progress bars follow :mod:`spidr_hf.progress` (a line every few percent off a terminal).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence

from transformers.utils import logging as transformers_logging

from ..errors import UsageError
from ..progress import set_quiet

DEBUG_ENV = "SPIDR_HF_DEBUG"


def kebab_case_flags(argv: Sequence[str]) -> list[str]:
    """``--output_dir=x`` -> ``--output-dir=x`` for every flag before a bare ``--``; values stay as they are."""
    converted, flags_done = [], False
    for token in argv:
        flags_done = flags_done or token == "--"
        if not flags_done and token.startswith("--"):
            flag, equals, value = token.partition("=")
            token = flag.replace("_", "-") + equals + value
        converted.append(token)
    return converted


class CommandParser(argparse.ArgumentParser):
    """argparse with the spidr-hf conventions: snake_case spellings of kebab-case flags, ``--quiet``, ``--debug``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        add_output_flags(self)

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(kebab_case_flags(sys.argv[1:] if args is None else args), namespace)


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` and ``--debug``, the flags every command takes."""
    group = parser.add_argument_group("output")
    group.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")
    group.add_argument("--debug", action="store_true", help=f"show tracebacks instead of one-line errors ({DEBUG_ENV}=1)")


def apply_output_flags(args: argparse.Namespace, level: int = logging.INFO) -> None:
    """Configure logging (``level``, WARNING with ``--quiet``) and the progress bars for this process."""
    set_quiet(args.quiet)
    if args.quiet:  # transformers' own bars (loading and writing weights) too
        transformers_logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING if args.quiet else level, format="%(levelname)s %(message)s")


USER_ERRORS: tuple[type[Exception], ...] = (UsageError, ValueError, OSError)
"""What every command reports as its user's mistake: the library raises ``ValueError`` for a bad
value, option or file content (naming it), ``OSError`` for a file or folder it cannot use."""

EXIT_USER_ERROR = 2
"""The exit status of a command stopped by its user's mistake (argparse's own errors exit with it too)."""


def command(
    name: str, user_errors: tuple[type[Exception], ...] = ()
) -> Callable[[Callable[[list[str]], int]], Callable[[list[str]], int]]:
    """Decorate a command's ``main(argv) -> int`` with the one error path.

    A :class:`UsageError`, a ``ValueError``, an ``OSError``, or an exception of a type in
    ``user_errors`` becomes the line ``spidr-hf NAME: error: MESSAGE`` on stderr and exit status 2;
    with ``--debug`` or ``SPIDR_HF_DEBUG=1`` it propagates with its traceback. Ctrl-C ends the
    command with ``spidr-hf NAME: interrupted`` and status 130, as a shell reports SIGINT.
    """

    def decorate(main: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        @functools.wraps(main)
        def run(argv: list[str]) -> int:
            debug = "--debug" in argv or os.environ.get(DEBUG_ENV) == "1"
            try:
                return main(argv)
            except (*USER_ERRORS, *user_errors) as error:
                if debug:
                    raise
                print(f"spidr-hf {name}: error: {_one_line(error)}", file=sys.stderr)
                return EXIT_USER_ERROR
            except KeyboardInterrupt:
                if debug:
                    raise
                print(f"spidr-hf {name}: interrupted", file=sys.stderr)
                return 130

        return run

    return decorate


def _one_line(error: BaseException) -> str:
    """The error's message on one line (an ``OSError`` without one says what it is about)."""
    text = str(error) or type(error).__name__
    return " ".join(text.split())


def _number(text: str, cast: type, kind: str, valid: Callable[[float], bool]) -> int | float:
    try:
        value = cast(text)
    except ValueError:
        value = None
    if value is None or value != value or value in (float("inf"), float("-inf")) or not valid(value):
        raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    return _number(text, int, "a positive integer", lambda v: v > 0)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, "a non-negative integer", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, "a positive number", lambda v: v > 0)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, float, "a non-negative number", lambda v: v >= 0)


def model_and_audio_parser(prog: str, description: str, epilog: str) -> CommandParser:
    """A parser taking a model directory and audio inputs, as ``extract`` and ``fit-kmeans`` do."""
    parser = CommandParser(prog=prog, description=description, epilog=epilog)
    parser.add_argument("model_dir", help="a SpidR model directory (transformers format)")
    parser.add_argument(
        "inputs",
        nargs="+",
        help="audio files, folders (recursive), .csv/.jsonl/.tsv manifests, saved datasets",
    )
    return parser
