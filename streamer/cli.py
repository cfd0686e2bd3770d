"""The ``crowdcount`` command. Each sub-command's package is imported only when it runs,
so ``serve`` and ``count`` start without TensorFlow.

Errors a user can fix (a missing file, a bad dataset, a bad config) end with exit code 2
and one line on stderr; anything else is a bug and keeps its traceback (``model/errors.py``).
"""

from __future__ import annotations

import argparse
import sys

from crowdcount.model.errors import run_parser


def build_parser() -> argparse.ArgumentParser:
    from crowdcount.model.cli import add_count
    from crowdcount.streamer.version import VERSION
    from crowdcount.training.cli import add_calibrate, add_evaluate, add_export, add_train

    parser = argparse.ArgumentParser(
        prog="crowdcount", description="Real-time density-map crowd counting."
    )
    parser.add_argument("--version", action="version", version=f"crowdcount {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    try:
        from crowdcount.streamer.serve import add_serve
    except ImportError:  # the server's dependencies are optional on training machines
        pass
    else:
        add_serve(sub)
    add_count(sub)
    add_train(sub)
    add_evaluate(sub)
    add_export(sub)
    add_calibrate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_parser(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
