"""``ood-perception demo``: the whole system on the built-in synthetic world (``make demo``)."""

from __future__ import annotations

import argparse

from ood_perception.commands._help import PlainHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo",
        formatter_class=PlainHelpFormatter,
        help="synthesise a drive, replay it, run the live node graph and recognition; write demo_out/report.html",
        description="Synthesise a short drive with anomalies (cached), replay it through the fusion pipeline, run "
        "the fusion node in-process over rclpy on the same bag and compare, run action recognition with the default "
        "recognition model on the world's clips and the recognition node over rclpy on Debian opencv-doc's vtest.avi "
        "(when installed), write OUT/report.html, OUT/recognition.json and overlay PNGs.",
    )
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--model", default=None, help="model directory (default: the shipped default model)")
    p.add_argument("--recognition-model", default=None,
                   help="recognition model directory (default: the shipped default recognition model)")
    p.add_argument("--video", default=None,
                   help="real video for the recognition node (default: Debian opencv-doc's vtest.avi when installed)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch", "tensorrt"])
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic drive")
    p.add_argument("--quick", action="store_true", help="a shorter drive and fewer clips (CI)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the demo; a missing piece (e.g. no default model) is one line and exit code 1."""
    from ood_perception.app.demo import (
        demo_main,  # lazy: the command's implementation loads only when it runs (--help stays fast)
    )

    return demo_main(args)
