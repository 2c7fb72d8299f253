"""``ood-perception train TASK``: training tasks, each in its own module of the trainer room.

A task module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Task modules (torch and
the rest) are imported only when their task runs, so ``--help`` stays fast; a task whose module
cannot be imported says so in one line when it is asked for, instead of silently vanishing.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from ood_perception.commands._help import PlainHelpFormatter
from ood_perception.world.clips import ensure_clip_dataset

#: task name -> (module implementing it, one-line help).
TASKS: dict[str, tuple[str, str]] = {
    "segmentation": ("ood_perception.trainer.segmentation",
                     "camera + LiDAR fusion segmentation with outlier synthesis (Feature Mixing, NP-Mix, A2D)"),
    "recognition": ("ood_perception.trainer.recognition",
                    "video + optical-flow recognition (synthetic clips, generated when --data is empty, or video folders)"),
    "distill": ("ood_perception.trainer.distill_cli",
                "dark-knowledge distillation of a checkpoint's joint head from its unimodal experts"),
    "crops": ("ood_perception.trainer.crops",
              "object-crop OOD classifiers: kNN baseline, MoFE, MoFE + Dynamic-beta Mixup, CMA + NegLabel"),
}


def task_module(name: str) -> ModuleType:
    """The module of task ``name``; ValueError (one line) when it cannot be imported."""
    modname = TASKS[name][0]
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        raise ValueError(f"task {name!r} is not available in this install ({modname}: {exc})") from None
    if not (hasattr(mod, "add_arguments") and hasattr(mod, "run")):
        raise ValueError(f"task {name!r}: {modname} has no add_arguments/run")
    return mod


def task_parser(name: str, mod: ModuleType) -> argparse.ArgumentParser:
    """The argument parser of one task (``ood-perception train NAME ...``)."""
    parser = argparse.ArgumentParser(prog=f"ood-perception train {name}", description=(mod.__doc__ or "").strip(),
                                     formatter_class=PlainHelpFormatter)
    mod.add_arguments(parser)
    return parser


def _generate_clips_if_empty(args: argparse.Namespace) -> None:
    """``train recognition`` on an empty or missing ``--data``: render the synthetic clip world there
    first (the trainer room reads data and never imports the world, so the command does this)."""

    ensure_clip_dataset(args.data, args.clips_per_class, args.seed, args.clip_len, args.size)


#: task name -> a step run before the task (data generation the trainer room may not do itself).
PREPARE = {"recognition": _generate_clips_if_empty}


def run_task(name: str, argv: list[str]) -> int:
    """Parse ``argv`` with task ``name``'s parser, run its preparation step and the task."""
    mod = task_module(name)
    args = task_parser(name, mod).parse_args(argv)
    if name in PREPARE:
        PREPARE[name](args)
    return int(mod.run(args) or 0)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train TASK [task arguments]``; ``ood-perception train TASK --help`` lists a task's own."""
    listing = "\n".join(f"  {name:13s} {text}" for name, (_, text) in TASKS.items())
    parser = subparsers.add_parser(
        "train", help="train a model (" + ", ".join(TASKS) + ")",
        description=f"Train a model.\n\ntasks:\n{listing}\n\n`ood-perception train TASK --help` shows a task's arguments.",
        formatter_class=PlainHelpFormatter)
    parser.add_argument("task", choices=list(TASKS), metavar="TASK", help="one of: " + ", ".join(TASKS))
    parser.add_argument("task_args", nargs=argparse.REMAINDER, metavar="...", help="the task's arguments")
    parser.set_defaults(func=lambda args: run_task(args.task, args.task_args))
