"""Mistakes a user can fix, and the one place that turns them into exit code 2.

Why a type of its own: the ``crowdcount`` command must tell "your file / argument / config /
dataset is wrong" (one line on stderr, exit 2) from a bug in this code (a traceback, so it
gets reported and fixed). Catching every ``ValueError`` hid bugs as one-liners. Code that
checks user input raises ``UserError`` (or a subclass: ``ImageError``, ``ConfigError``,
``DatasetError``); a file the user named that is missing or unreadable is an ``OSError`` of
the kinds listed in ``USER_ERRORS``. Anything else keeps its traceback.

Why here: ``model/`` is the package every other one imports and that imports none of them,
so the serving command (``streamer/cli.py``) and ``python -m crowdcount.training`` share
this runner without importing each other.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["USER_ERRORS", "UserError", "run_parser"]


class UserError(ValueError):
    """Bad input from the user; ``str()`` is one line saying what and where.

    A ``ValueError`` so library callers that treat bad input as one (the upload route's
    400) keep working."""


#: What the command reports as the user's mistake rather than a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def run_parser(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run the chosen sub-command (its ``run`` default); a user error
    ends with exit code 2 and one line on stderr, Ctrl-C with 130."""
    # TensorFlow (train/evaluate/export) logs pages of C++ INFO lines; keep warnings only.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split())
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return 2
