"""Classify the image crop of each alert region with a crop model (MoFE / baseline + kNN), ROS-free.

An optional step for the fusion node and replay (off by default): for every region with a 2D box
(``pipeline.regions.Region``), the square crop around the box (``geometry.crops``, the same cut as
training's ``data.crops``) goes through a checkpoint written by ``ood-perception train crops
--out PATH``; the result says which ID class the object looks like and whether it is one of them
(kNN score above the checkpoint's threshold, calibrated to keep 95% of ID validation crops).
:meth:`CropClassifier.annotate` writes it into ``Region.extra`` and returns a phrase for the
alert's description.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ood_perception.geometry.crops import crop_resize, square_box
from ood_perception.models.mofe import MoFE, build_split_backbone
from ood_perception.pipeline.regions import Region
from ood_perception.scoring.feature_based import KNN


@dataclass
class CropResult:
    """The recognition of one region's crop.

    Attributes:
        class_id: most likely ID class (index into the checkpoint's classes), ``label`` its name.
        confidence: softmax probability of that class within the routed expert (its "other"
            output included in the softmax).
        score: kNN OOD score (higher = more anomalous); ``is_known = score <= threshold``.
    """

    class_id: int
    label: str
    confidence: float
    score: float
    is_known: bool


class CropClassifier:
    """A loaded crop checkpoint (see the module docstring).

    Args:
        path: checkpoint of ``ood-perception train crops --out``.
        context: crop margin around a region's box (as in training, 0.15).
        min_side: regions whose box is smaller get no result.
        dinov2_hub, dinov2_weights: where a ``dinov2`` checkpoint's backbone comes from.
    """

    def __init__(self, path: str | os.PathLike[str], context: float = 0.15, min_side: int = 8,
                 dinov2_hub: str | None = None, dinov2_weights: str | None = None) -> None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"crop model not found: {path}")
        ck: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ck, dict) or ck.get("kind") != "crops":
            raise ValueError(f"{path} is not a crop checkpoint (ood-perception train crops --out)")
        backbone = build_split_backbone(ck["backbone"], dinov2_hub, dinov2_weights)
        self.model = MoFE(backbone, ck["partition"])
        missing, unexpected = self.model.load_state_dict(ck["state_dict"], strict=False)
        bad = [k for k in missing if not k.startswith("backbone.")] + list(unexpected)
        if bad:
            raise ValueError(f"{path}: checkpoint does not match its model: {bad[:5]}")
        self.model.eval()
        self.model.banks = [KNN(k=min(int(ck["knn_k"]), int(b.shape[0]))).fit(features=b) for b in ck["banks"]]
        self.class_names: list[str] = list(ck["class_names"])
        self.size, self.threshold = int(ck["size"]), float(ck["threshold"])
        self.method = str(ck["method"])
        self.context, self.min_side = float(context), int(min_side)

    @torch.no_grad()
    def classify_crops(self, crops: np.ndarray) -> list[CropResult]:
        """Results for uint8 RGB crops ``[N, S, S, 3]`` already at the model's size."""
        if crops.ndim != 4 or crops.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"crops must be [N, {self.size}, {self.size}, 3], got {crops.shape}")
        if crops.shape[0] == 0:
            return []
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
        score, out = self.model.score_trunk_output(self.model.trunk(x))
        local = torch.cat([out.class_logits, out.other_logit[:, None]], dim=1)
        prob = torch.softmax(local, dim=1)[:, :-1]
        conf, cls = prob.max(dim=1)
        return [CropResult(int(c), self.class_names[int(c)], float(p), float(s), bool(s <= self.threshold))
                for c, p, s in zip(cls, conf, score, strict=True)]

    def classify(self, image: np.ndarray, regions: list[Region]) -> list[CropResult | None]:
        """One result per region (None for regions without a 2D box or smaller than ``min_side``).

        Args:
            image: uint8 ``[H, W, 3]`` RGB camera image the regions were found in.
        """
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be [H, W, 3] RGB, got {image.shape}")
        h, w = image.shape[:2]
        crops, where = [], []
        for i, r in enumerate(regions):
            if not r.has_2d or max(r.width, r.height) < self.min_side:
                continue
            box = square_box(r.x_min, r.y_min, r.x_min + r.width, r.y_min + r.height, w, h, self.context)
            crops.append(crop_resize(image, box, self.size))
            where.append(i)
        results: list[CropResult | None] = [None] * len(regions)
        if crops:
            for i, res in zip(where, self.classify_crops(np.stack(crops)), strict=True):
                results[i] = res
        return results

    def annotate(self, image: np.ndarray, regions: list[Region]) -> list[str]:
        """Classify and store each result in ``region.extra["crop"]``; returns one phrase per
        classified region (e.g. ``"region 1: unknown object (nearest class car, score 0.61)"``)."""
        phrases = []
        for i, (r, res) in enumerate(zip(regions, self.classify(image, regions), strict=True), 1):
            if res is None:
                continue
            r.extra["crop"] = {"label": res.label, "class_id": res.class_id, "confidence": res.confidence,
                               "score": res.score, "is_known": res.is_known}
            what = f"looks like {res.label}" if res.is_known else f"unknown object (nearest class {res.label}"
            phrases.append(f"region {i}: {what}" + (f", score {res.score:.2f})" if not res.is_known
                                                     else f" ({res.confidence:.0%}, score {res.score:.2f})"))
        return phrases
