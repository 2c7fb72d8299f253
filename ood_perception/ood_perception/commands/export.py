"""``ood-perception export CHECKPOINT --out DIR``: model + OOD scorer as one ONNX graph with ``model.json``.

The checkpoint's kind is detected (segmentation, or ``task: recognition``). With ``--calib-data``
the deployment threshold is calibrated at ``--tpr`` (default 95%) of ID validation pixels/clips.
A recognition model (inputs video + flow clip; outputs class, confidence, OOD score and the
video-only / flow-only expert scores) can also be evaluated on held-out clips (``--eval-data``:
accuracy, AUROC, FPR95 recorded in ``model.json`` provenance).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ood_perception.commands._help import PlainHelpFormatter


def _param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint + OOD scorer to ONNX with model.json",
        description=__doc__,
        formatter_class=PlainHelpFormatter,
    )
    p.add_argument("checkpoint", help="training checkpoint (.pt)")
    p.add_argument("--out", required=True, help="model directory to write (replaced atomically with --force)")
    p.add_argument("--score", default=None,
                   help="OOD scorer of the fused/joint head (default: maxlogit for segmentation, msp for recognition)")
    p.add_argument("--score-param", action="append", type=_param, default=[], metavar="NAME=VALUE",
                   help="scorer parameter (repeatable; VALUE parsed as JSON when possible)")
    p.add_argument("--unimodal-score", default=None,
                   help="logit-only scorer of the unimodal expert heads (default: maxlogit for segmentation; "
                        "for recognition the joint scorer when it is logit-only and unfitted, else maxlogit); "
                        "not with --score maxlogit_knn, which scores the expert heads itself")
    p.add_argument("--calib-data", default=None, metavar="DIR",
                   help="ID dataset root (e.g. `ood-perception synth` output) for the threshold and fitted scorers")
    p.add_argument("--fit-data", default=None, metavar="DIR",
                   help="segmentation: dataset root whose train split (every sequence without one) fits scorers with "
                        "statistics, e.g. the training world (default: --calib-data's train split; needs --calib-data "
                        "for the threshold)")
    p.add_argument("--calib-split", default=None,
                   help="split of --calib-data used for the threshold (default: val for segmentation, "
                        "test for a recognition clip dataset: give a clip dataset of another data seed)")
    p.add_argument("--eval-data", default=None, metavar="DIR",
                   help="recognition only: held-out clip dataset (test + near/far OOD splits) evaluated into model.json")
    p.add_argument("--calib-frames", type=int, default=64,
                   help="at most this many calibration frames, and fit frames for scorers with statistics (default 64; "
                        "`evaluate` fits on 64)")
    p.add_argument("--tpr", type=float, default=0.95, help="share of ID pixels (or clips) below the threshold (default 0.95)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                   help="torch.onnx exporter (default torchscript)")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the export; prints the written model.json summary."""

    import torch  # lazy: torch is heavy to import and only this path needs it

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"{out} exists; pass --force to replace it")
    ckpt_path = Path(args.checkpoint)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    common = dict(score_params=dict(args.score_param), tpr=args.tpr,
                  opset=args.opset, exporter=args.exporter, overwrite=True)
    if isinstance(ckpt, dict) and ckpt.get("task") == "recognition":
        from ood_perception.trainer.export import export_recognition_from_data

        spec = export_recognition_from_data(ckpt_path, out, calib_data=args.calib_data,
                                            calib_split=args.calib_split or "test", eval_data=args.eval_data,
                                            score=args.score or "msp", unimodal_score=args.unimodal_score, **common)
    else:
        if args.fit_data is not None and not Path(args.fit_data).is_dir():
            raise FileNotFoundError(f"--fit-data not found: {args.fit_data}")
        if args.fit_data is not None and args.calib_data is None:
            raise ValueError("--fit-data needs --calib-data: the threshold is calibrated on its ID pixels")
        from ood_perception.models.wrappers import scorer_feature_source  # lazy: torch (see above)
        from ood_perception.scoring import get_scorer  # lazy: torch (see above)

        if args.unimodal_score and scorer_feature_source(get_scorer(args.score or "maxlogit")) == "embedding":
            raise ValueError(f"--unimodal-score is not used with --score {args.score}: it scores the expert heads itself")
        if args.eval_data is not None:
            raise ValueError("--eval-data is for recognition checkpoints; evaluate segmentation with `ood-perception evaluate`")
        from ood_perception.trainer.export import export_segmentation_from_data

        spec = export_segmentation_from_data(
            ckpt_path, out, calib_data=args.calib_data, calib_split=args.calib_split or "val",
            max_calib_frames=args.calib_frames, fit_data=args.fit_data, score=args.score or "maxlogit",
            unimodal_score=args.unimodal_score or "maxlogit", **common,
        )
    thr = "none (no --calib-data)" if spec.threshold is None else f"{spec.threshold:.4f}"
    print(f"wrote {out}: kind={spec.kind} classes={len(spec.class_names)} score={spec.score_name} "
          f"threshold={thr} onnx sha256={spec.files['onnx'].sha256[:16]}...")
    ev = spec.provenance.get("evaluation")
    if ev:
        ood = ", ".join(f"{k} AUROC {v['auroc']:.3f} FPR95 {v['fpr95']:.3f}" for k, v in ev["ood"].items())
        print(f"held-out {ev['id_split']}: accuracy {ev['accuracy']['joint']:.3f}; {ood}")
    return 0
