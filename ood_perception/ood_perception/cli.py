"""The ``ood-perception`` command line.

Each subcommand lives in its own module under :mod:`ood_perception.commands` and exposes
``register(subparsers) -> None``; the module adds its parser and sets ``func`` (called with the
parsed namespace, returning an exit code). Modules are discovered, so a subcommand exists exactly
when its module is there, and heavy imports (torch, rclpy) happen only when it runs.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import gc
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from ood_perception import __version__, commands
from ood_perception.atomic import Terminated, terminate_as_exception
from ood_perception.runtime import BackendUnavailableError

#: Order in which subcommands are listed in ``--help`` (others follow alphabetically).
_ORDER = ["synth", "train", "evaluate", "export", "replay", "run", "demo", "bench"]


def _command_modules() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="ood-perception", allow_abbrev=False,
        description="Multimodal out-of-distribution perception: data synthesis, training, "
        "evaluation, export, rosbag replay and running the ROS 2 nodes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _command_modules():
        module = importlib.import_module(f"{commands.__name__}.{name}")
        module.register(sub)
    for command_parser in sub.choices.values():
        # options spelled out: an abbreviation (--ou for --out) that works today would silently change
        # meaning or break when an option is added, in scripts and launch files alike
        command_parser.allow_abbrev = False
    return parser


def _command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The subcommand's own parser (its usage and ``prog`` name errors about its arguments)."""
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


@functools.cache
def _skip_the_final_collection() -> None:
    """Freeze the heap as the last exit handler (once per process), so the interpreter's shutdown skips
    its cyclic garbage collection: with torch (and torch._dynamo, which the first optimizer imports)
    loaded, that collection takes 0.6-0.9 s of every command's exit and frees nothing that matters to
    the process's outputs. Registered first, so it runs after every other exit handler (LIFO): those
    still run (logging's flush, tempfile and multiprocessing clean-up); files that matter are closed
    and renamed by :mod:`ood_perception.atomic` long before."""
    atexit.register(gc.freeze)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ood-perception``; returns the process exit code."""
    _skip_the_final_collection()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's parser: its usage, "ood-perception replay: error: ..."
        _command_parser(parser, getattr(args, "command", None)).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with terminate_as_exception():  # SIGTERM unwinds like Ctrl-C: temporaries are removed, not left
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler below (Python docs, SIGPIPE)
            return code
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:  # user errors: one clear line, no traceback
        print(f"ood-perception {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BackendUnavailableError as exc:  # e.g. --backend tensorrt without TensorRT/CUDA: not a crash
        print(f"ood-perception {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as Unix tools do
        with contextlib.suppress(OSError, ValueError):  # the interpreter's final flush then goes nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python docs, "Note on SIGPIPE")
        return 141


if __name__ == "__main__":
    sys.exit(main())
