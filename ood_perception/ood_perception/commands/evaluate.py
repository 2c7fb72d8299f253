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
    parser.add_argument("--decisions", metavar="MODEL_DIR",
                        help="also run the node's decisions (the fusion pipeline of this exported model directory, "
                             "'default' = the packaged model, with --params) over the evaluated split and report "
                             "them as replay does: frame AUROC of OodAlert.score, anomaly objects alerted, false "
                             "alerts, the object AUROC by the score the node uses for objects, component F1 "
                             "(metrics.json 'decisions', report.md)")
    parser.add_argument("--params", metavar="YAML",
                        help="fusion node params file for --decisions (e.g. ood_perception/config/vehicle.yaml; "
                             "default: the node's defaults)")
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
    if args.params is not None and args.decisions is None:
        raise ValueError("--params is for --decisions (the node's decisions); give --decisions MODEL_DIR too")
    if args.params is not None and not Path(args.params).is_file():
        raise FileNotFoundError(f"--params not found: {args.params}")
    if args.decisions not in (None, "default") and not (Path(args.decisions) / "model.json").is_file():
        raise FileNotFoundError(f"--decisions {args.decisions}: no model.json there (give an exported model directory)")
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
    if args.decisions is not None:
        d = _decisions(args, out, m.get("split"))
        a = d["alerts"]
        if a.get("available"):
            obs = a["object_scores"]["observations"]
            line += (f"; decisions: frame AUROC {_fmt(a['frame']['scores'].get('auroc'))}, object AUROC "
                     f"{_fmt(obs.get('auroc'))}, anomaly-free frames in ALERT {_fmt(a['false_alerts'].get('frame_share'))}")
    print(f"{line} -> {out}/report.md")
    return 0


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _decisions(args: argparse.Namespace, out: str, split: str | None) -> dict:
    """Run the node's decisions over the evaluated split and add them to metrics.json and report.md."""
    import json

    # lazy like the rest of the command: the pipeline and the model runtime are heavy
    from ood_perception import runtime
    from ood_perception.atomic import atomic_write_bytes
    from ood_perception.data import DatasetConfig
    from ood_perception.pipeline import FusionConfig, FusionPipeline
    from ood_perception.replay.dataset import decision_metrics
    from ood_perception.replay.params import node_parameters, settings_from_params
    from ood_perception.replay.report import write_json

    model_dir = runtime.default_model_dir() if args.decisions == "default" else Path(args.decisions)
    fusion = dict(settings_from_params(node_parameters(args.params)).fusion) if args.params else {}
    pipe = FusionPipeline(runtime.load(model_dir, intra_op_threads=1), FusionConfig(**fusion))
    sequences = DatasetConfig.from_yaml(Path(args.data) / "dataset.yaml").splits.get(split) if split else None
    d = decision_metrics(pipe, args.data, sequences)
    d["model_dir"] = str(Path(model_dir).resolve())
    d["params"] = args.params
    d["decision_warnings"] = list(pipe.decision_warnings)
    path = Path(out) / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["decisions"] = d
    write_json(path, metrics)  # atomic; NaN -> null as replay writes it
    lines = ["", "## The node's decisions (`--decisions`)", "",
             f"Fusion pipeline of `{d['model_dir']}` with {args.params or 'the node defaults'} over the evaluated split "
             "(as `ood-perception replay` judges a bag; metrics.json `decisions`):", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in d["summary"]]
    if d["decision_warnings"]:
        lines += ["", *(f"Warning: {w}" for w in d["decision_warnings"])]
    report = Path(out) / "report.md"
    atomic_write_bytes(report, (report.read_text() + "\n".join(lines) + "\n").encode())
    return d
