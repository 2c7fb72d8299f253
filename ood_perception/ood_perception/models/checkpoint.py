"""Reading segmentation checkpoints safely (``torch.load(weights_only=True)``).

A checkpoint is the dict described in docs/architecture.md (``model_config``, ``state_dict``,
``class_names``, ``colors``, ``input_size``, ``mean``, ``std``, ``train``, ``metrics`` and, for
resuming, optimizer/scheduler/step/RNG state). Writing lives in
:mod:`ood_perception.trainer.checkpoint` (atomic temp + rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ood_perception.models.segmentation import FusionSegNet, ModelConfig, TapFusionNet, build_model

#: Keys every segmentation checkpoint must have.
REQUIRED_KEYS: tuple[str, ...] = ("model_config", "state_dict", "class_names")


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; clear errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, unsafe pickle
        raise ValueError(f"cannot read checkpoint {path} (corrupt or not a torch checkpoint): {exc}") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        hint = ""
        if (path.parent / "model.json").is_file():  # an exported model directory's torch weights
            hint = (" (it is the torch weights of an exported model directory, not a training checkpoint: "
                    "evaluate a training checkpoint, or replay a bag with --model "
                    f"{path.parent})")
        raise ValueError(f"checkpoint {path} lacks keys {missing}{hint}")
    return ckpt


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                    eval_mode: bool = True) -> tuple[FusionSegNet | TapFusionNet, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint.

    Returns:
        ``(model, checkpoint_dict)``; the model is in eval mode unless ``eval_mode=False``.
    """
    ckpt = read_checkpoint(path, map_location)
    cfg = dict(ckpt["model_config"])
    cfg["pretrained"] = None  # the state dict carries the weights; never re-read external files
    try:
        model = build_model(ModelConfig.from_dict(cfg))
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"checkpoint {path}: weights do not fit its model_config: {exc}") from None
    model.to(map_location)
    if eval_mode:
        model.eval()
    return model, ckpt
