"""``ood-perception evaluate CHECKPOINT --data DIR``: metrics.json + report.md + figures.

The arguments live here and the work in :mod:`ood_perception.trainer.evaluate`, which is imported
only when the command runs (torch, scikit-learn: ``--help`` stays fast).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ood_perception.commands._help import PlainHelpFormatter

#: ``trainer.evaluate.DEFAULT_SCORERS`` and ``RESOLUTIONS`` (a test keeps them equal).
DEFAULT_SCORERS: tuple[str, ...] = ("maxlogit", "energy", "msp", "entropy", "gen", "himplos")
RESOLUTIONS: tuple[str, ...] = ("camera", "input")

DESCRIPTION = """Closed-set and OOD metrics of a segmentation checkpoint: writes metrics.json and report.md with mIoU
over the ID classes (pixel and point level; fused and unimodal heads) and, for each scorer, AUROC / FPR95 /
AUPR at pixel and point level (OOD = positive), component-level F1 (SegmentMeIfYouCan) and the object-score
separation, plus figures (ROC curves, score histograms, overlays). Metrics convention: see
docs/architecture.md ("Metrics")."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser("evaluate", help="evaluate a segmentation checkpoint (mIoU, AUROC/FPR95/AUPR, plots)",
                                   description=DESCRIPTION, formatter_class=PlainHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ood-perception evaluate``."""
    parser.add_argument("checkpoint", help="model.pt / last.pt written by `train segmentation`")
    parser.add_argument("--data", required=True, help="dataset root")
    parser.add_argument("--out", help="output dir (default: next to the checkpoint, eval/)")
    parser.add_argument("--split", help="split to evaluate (default: test, else val, else all)")
    parser.add_argument("--scorers", default=",".join(DEFAULT_SCORERS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--fit-data", metavar="DIR",
                        help="dataset root whose train split fits the scorers with statistics (himplos, knn, "
                             "maxlogit_knn...; default: --data's train split, skipped when it has none)")
    parser.add_argument("--schema", help="CARLA-OOD schema YAML")
    parser.add_argument("--cache-dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overlays", type=int, default=6, help="overlay images to draw")
    parser.add_argument("--resolution", choices=RESOLUTIONS, default=RESOLUTIONS[0],
                        help="camera: pixel metrics at the label (camera) resolution with the node's upsampling and "
                        "the pipeline's visible points, as `ood-perception replay` computes them; input: at the "
                        "model input size, labels downsampled, all in-view points (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Entry of ``ood-perception evaluate``."""
    # the user's paths first: a typo is one line at once, not after seconds of importing torch
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}"
                                + (" (a directory: give its .pt file)" if Path(args.checkpoint).is_dir() else ""))
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"dataset not found: {args.data}")
    if args.fit_data is not None and not Path(args.fit_data).is_dir():
        raise FileNotFoundError(f"--fit-data not found: {args.fit_data}")
    import torch  # lazy: torch is heavy to import and only this path needs it

    from ood_perception.trainer.evaluate import evaluate  # lazy: the command's implementation

    torch.set_num_threads(1)
    out = args.out or str(Path(args.checkpoint).resolve().parent / "eval")
    scorers = tuple(s.strip() for s in args.scorers.split(",") if s.strip())
    m = evaluate(args.checkpoint, args.data, out, args.split, scorers, args.schema, args.cache_dir, args.device,
                 args.overlays, not args.no_plots, show_progress=not args.quiet, resolution=args.resolution,
                 fit_data=args.fit_data)
    seg = m["segmentation"].get("pixel") or m["segmentation"].get("point")
    ood = m["ood"].get("pixel") or m["ood"].get("point") or {}
    head = scorers[0]
    line = f"mIoU {100 * seg['fused']['miou']:.1f}%" if seg else "no labels"
    if head in ood:
        line += f", {head}: AUROC {100 * ood[head]['auroc']:.1f}%, FPR95 {100 * ood[head]['fpr95']:.1f}%"
    print(f"{line} -> {out}/report.md")
    return 0
