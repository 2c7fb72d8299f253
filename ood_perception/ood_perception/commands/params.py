"""``ood-perception params``: the nodes' parameters with their defaults and descriptions.

The same tables the nodes declare (``ros2 param describe`` shows them on a running node); a params
file such as ``config/vehicle.yaml`` overrides any of them under ``ros__parameters``.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from typing import Any

from ood_perception.commands._help import PlainHelpFormatter

NODES = ("fusion_segmentation", "action_recognition")


def register(subparsers) -> None:
    """Add the ``params`` subcommand."""
    p = subparsers.add_parser(
        "params",
        formatter_class=PlainHelpFormatter,
        help="list the nodes' parameters (name, default, description)",
        description="List the parameters of the fusion node and the recognition node: name, default and what it "
        "does (the tables the nodes declare; a params file overrides them under ros__parameters).",
    )
    p.add_argument("node", nargs="?", type=_node, metavar="NODE",
                   help=f"only this node: {', '.join(NODES)} or a unique start of its name, e.g. fusion (default: both)")
    p.add_argument("--grep", metavar="TEXT", help="only parameters whose name or description contains TEXT")
    p.set_defaults(func=handler)


def _node(text: str) -> str:
    """A node's name from its full name or a unique start of it (``fusion``, ``action``)."""
    found = [n for n in NODES if n.startswith(text.strip().lower())] if text.strip() else []
    if len(found) != 1:
        raise argparse.ArgumentTypeError(f"unknown node {text!r}; the nodes are {', '.join(NODES)}")
    return found[0]


def _table(node: str) -> list[tuple[str, Any, str]]:
    if node == "fusion_segmentation":
        from ood_perception.pipeline.frame_handler import FUSION_PARAMETERS

        return FUSION_PARAMETERS
    # lazy: the recognition node's table lives with the node, which imports rclpy
    from ood_perception.ros.recognition_node import PARAMETERS

    return PARAMETERS


def _default(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def handler(args: argparse.Namespace) -> int:
    """Print the tables; 0."""
    needle = (args.grep or "").lower()
    for node in [args.node] if args.node else list(NODES):
        rows = [r for r in _table(node) if needle in r[0].lower() or needle in r[2].lower()]
        plural = "" if len(rows) == 1 else "s"
        print(f"{node} ({len(rows)} parameter{plural}{f' matching {args.grep!r}' if needle else ''}):")
        for name, default, desc in rows:
            print(f"  {name} = {_default(default)}")
            print(textwrap.fill(desc, width=100, initial_indent="      ", subsequent_indent="      "))
        print()
    return 0
