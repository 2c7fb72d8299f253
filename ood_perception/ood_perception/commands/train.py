"""``ood-perception train TASK``: training tasks, each in its own module.

A task module exposes ``add_arguments(parser)`` and ``run(args) -> int``; tasks whose module
cannot be imported (not written yet, or a missing optional dependency) are not offered.
"""

from __future__ import annotations

import argparse
import importlib

#: task name -> module implementing it.
TASKS: dict[str, str] = {
    "segmentation": "ood_perception.trainer.segmentation",
    "recognition": "ood_perception.trainer.recognition",
    "distill": "ood_perception.distill.cli",
    "crops": "ood_perception.trainer.crops",
}


def available_tasks() -> dict[str, object]:
    """Importable task modules that follow the protocol, by name."""
    found = {}
    for name, modname in TASKS.items():
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        if hasattr(mod, "add_arguments") and hasattr(mod, "run"):
            found[name] = mod
    return found


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` with one sub-subcommand per available task."""
    parser = subparsers.add_parser("train", help="train a model (segmentation, recognition, distill)",
                                   description="Train a model. Tasks: " + ", ".join(TASKS))
    tasks = parser.add_subparsers(dest="task", metavar="TASK")
    for name, mod in available_tasks().items():
        doc = (mod.__doc__ or "").strip().splitlines()
        sub = tasks.add_parser(name, help=doc[0] if doc else name, description=(mod.__doc__ or "").strip(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sub)
        sub.set_defaults(func=mod.run)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
