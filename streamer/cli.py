"""The ``crowdcount`` command. Each sub-command's package is imported only when it runs,
so ``serve`` and ``count`` start without TensorFlow.

Errors a user can fix (a missing file, a bad dataset, a bad config) end with exit code 2
and one line on stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

#: Exceptions that are the user's input, not our bug.
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, ValueError,
                                                PermissionError, IsADirectoryError)


def _user_errors() -> tuple[type[BaseException], ...]:
    extra: list[type[BaseException]] = []
    for module, name in (("crowdcount.training.readers.base", "DatasetError"),
                         ("crowdcount.streamer.config", "ConfigError")):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            extra.append(getattr(mod, name))
    return USER_ERRORS + tuple(extra)


def run_parser(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    # TensorFlow (train/evaluate/export) logs pages of C++ INFO lines; keep warnings only.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


def build_parser() -> argparse.ArgumentParser:
    from crowdcount.model.cli import add_count
    from crowdcount.training.cli import add_evaluate, add_export, add_train

    parser = argparse.ArgumentParser(
        prog="crowdcount", description="Real-time density-map crowd counting."
    )
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
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_parser(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
