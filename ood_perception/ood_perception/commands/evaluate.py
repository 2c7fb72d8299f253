"""``ood-perception evaluate CHECKPOINT --data DIR``: metrics.json + report.md + figures."""

from __future__ import annotations

import argparse

from ood_perception.commands._help import PlainHelpFormatter
from ood_perception.trainer import evaluate as ev


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand (arguments in :mod:`ood_perception.trainer.evaluate`)."""

    parser = subparsers.add_parser("evaluate", help="evaluate a segmentation checkpoint (mIoU, AUROC/FPR95/AUPR, plots)",
                                   description=(ev.__doc__ or "").strip(),
                                   formatter_class=PlainHelpFormatter)
    ev.add_arguments(parser)
    parser.set_defaults(func=ev.run)
