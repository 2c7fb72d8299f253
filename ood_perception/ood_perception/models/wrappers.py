"""Model + scorer wrapped as one ``torch.nn.Module``: what is exported to ONNX and run by the torch backend.

Both the ONNX graph and the torch backend are built from these wrappers, so deployment, export and
evaluation share one scoring code path (DESIGN.md: "the scorer is part of the exported graph").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ood_perception.models.spec import EMBEDDING_OUTPUT, RECOGNITION_OUTPUTS, SEGMENTATION_OUTPUTS


def scorer_needs_features(scorer: nn.Module) -> bool:
    """Whether ``scorer`` needs the penultimate features (not only logits).

    Read from the scorer's ``needs_features`` class attribute (``ood_perception.scoring.Scorer``).
    """
    return bool(getattr(scorer, "needs_features", False))


def scorer_feature_source(scorer: nn.Module) -> str:
    """Which model output a feature scorer reads: ``"features"`` (the fused head's penultimate
    features, the default) or ``"embedding"`` (the frozen encoder's taps, ``maxlogit_knn``)."""
    return str(getattr(scorer, "feature_source", "features"))


def _as_map(score: torch.Tensor) -> torch.Tensor:
    if score.dim() == 4 and score.shape[1] == 1:
        score = score[:, 0]
    if score.dim() != 3:
        raise ValueError(f"scorer must return a [B, H, W] score map, got shape {tuple(score.shape)}")
    return score.float()


class ScoredSegmentation(nn.Module):
    """``FusionSegNet`` + OOD scorer -> the six runtime outputs (seven with ``embedding``).

    ``forward(image, lidar)`` returns, in :data:`~ood_perception.models.spec.SEGMENTATION_OUTPUTS`
    order: fused ``class_map`` (argmax, int64 ``[B, H, W]``), fused ``score_map`` (float32, higher =
    more anomalous), then class and score maps of the camera and LiDAR expert heads.

    Args:
        model: module whose forward gives a dict with ``logits``, ``camera_logits``, ``lidar_logits``
            and ``features`` (the architecture contract).
        scorer: the fused-head scorer, ``scorer(logits, features) -> [B, H, W]``.
        unimodal_scorer: scorer for the expert heads, called on logits only (the expert heads have
            no features of the fused head). None: ``scorer`` itself, which must then be logit-only,
            or one that reads the ``embedding`` (``maxlogit_knn``: it scores the camera head with
            the embedding and the LiDAR head by its ``logit_score``, each head's MaxLogit in z units
            of its own training pixels).
        embedding: also return the model's ``embedding`` map (float32 ``[B, C, H/8, W/8]``) as a
            seventh output, :data:`~ood_perception.models.spec.EMBEDDING_OUTPUT` (models whose
            ``embedding_channels`` > 0 only).
    """

    def __init__(self, model: nn.Module, scorer: nn.Module, unimodal_scorer: nn.Module | None = None,
                 embedding: bool = False) -> None:
        super().__init__()
        reads_embedding = scorer_feature_source(scorer) == "embedding"
        if unimodal_scorer is None and scorer_needs_features(scorer) and not reads_embedding:
            raise ValueError(
                f"scorer {type(scorer).__name__} needs features; give a logit-only unimodal_scorer for the expert heads"
            )
        if reads_embedding and unimodal_scorer is not None:
            raise ValueError(f"scorer {getattr(scorer, 'name', type(scorer).__name__)!r} scores the expert heads itself "
                             "(on the fused head's scale); give no unimodal scorer")
        if reads_embedding and not getattr(model, "embedding_channels", 0):
            raise ValueError(f"scorer {getattr(scorer, 'name', type(scorer).__name__)!r} reads the model's embedding; "
                             f"{type(model).__name__} has none")
        if embedding and not getattr(model, "embedding_channels", 0):
            raise ValueError(f"{type(model).__name__} has no embedding output (embedding_channels is 0)")
        self.model = model
        self.scorer = scorer
        self.unimodal_scorer = unimodal_scorer
        self.embedding = bool(embedding)
        self.output_names = SEGMENTATION_OUTPUTS + ((EMBEDDING_OUTPUT,) if self.embedding else ())

    def fused_score(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fused score map ``[B, H, W]`` at input resolution from the model's output dict.

        Logit-only scorers score the full-resolution ``logits``; scorers that read the ``embedding``
        (:func:`scorer_feature_source`) get the full-resolution logits and the embedding. Scorers that need ``features``
        (which live on the feature grid: stride 4 or 8 by the design) score ``model.classifier(features)`` with ``features``
        on that grid, and the score map is upsampled bilinearly to the input size.
        """
        logits = out["logits"]
        if scorer_feature_source(self.scorer) == "embedding":  # e.g. maxlogit_knn: logits + frozen-encoder cells
            return _as_map(self.scorer(logits, out["embedding"]))  # (forward() shares the kNN map with the camera head)
        if not scorer_needs_features(self.scorer):
            return _as_map(self.scorer(logits, None))
        features = out["features"]
        low_logits = self.model.classifier(features)
        low = _as_map(self.scorer(low_logits, features))
        if low.shape[-2:] == logits.shape[-2:]:
            return low
        return F.interpolate(low[:, None], size=logits.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    def forward(self, image: torch.Tensor, lidar: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image, lidar)
        logits = out["logits"]
        cam, lid = out["camera_logits"], out["lidar_logits"]
        if scorer_feature_source(self.scorer) == "embedding":
            # every head in z units of its own training pixels, so the fused head's thresholds mean
            # about the same for the fallbacks: the camera-only head has the image (its MaxLogit and
            # the encoder's cells, whose kNN map is computed once for both), the LiDAR-only head only
            # its logits
            knn = self.scorer.knn_map(out["embedding"], logits.shape[-2:])
            fused = torch.maximum(self.scorer.logit_score(logits), knn)
            cam_score = torch.maximum(self.scorer.logit_score(cam, "camera"), knn)
            lid_score = self.scorer.logit_score(lid, "lidar")
            return (logits.argmax(dim=1), fused, cam.argmax(dim=1), cam_score, lid.argmax(dim=1), lid_score,
                    *((out["embedding"].float(),) if self.embedding else ()))
        else:
            uni = self.unimodal_scorer if self.unimodal_scorer is not None else self.scorer
            cam_score, lid_score = _as_map(uni(cam)), _as_map(uni(lid))
        maps = (
            logits.argmax(dim=1),
            self.fused_score(out),
            cam.argmax(dim=1),
            cam_score,
            lid.argmax(dim=1),
            lid_score,
        )
        return (*maps, out["embedding"].float()) if self.embedding else maps


class ScoredRecognition(nn.Module):
    """``RecognitionNet`` + OOD scorer -> the recognition runtime outputs (:data:`RECOGNITION_OUTPUTS`
    order): ``class`` (argmax of the joint head, int64 ``[B]``), ``confidence`` (its softmax
    probability), ``score`` (joint-head OOD score, higher = more anomalous), then ``video_class``,
    ``video_score``, ``flow_class``, ``flow_score`` of the video-only and flow-only expert heads.

    The joint scorer gets the joint head's ``features`` (``[B, 2D]``) when it needs them; the
    expert heads are scored from their logits by ``unimodal_scorer`` (None: ``scorer``, logit-only).
    """

    output_names = RECOGNITION_OUTPUTS

    def __init__(self, model: nn.Module, scorer: nn.Module, unimodal_scorer: nn.Module | None = None) -> None:
        super().__init__()
        if unimodal_scorer is None and scorer_needs_features(scorer):
            raise ValueError(
                f"scorer {type(scorer).__name__} needs features; give a logit-only unimodal_scorer for the expert heads"
            )
        self.model = model
        self.scorer = scorer
        self.unimodal_scorer = unimodal_scorer

    def forward(self, video: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(video, flow)
        logits = out["logits"]
        feats = out["features"] if scorer_needs_features(self.scorer) else None
        uni = self.unimodal_scorer if self.unimodal_scorer is not None else self.scorer
        v, f = out["video_logits"], out["flow_logits"]
        return (
            logits.argmax(dim=1),
            torch.softmax(logits.float(), dim=1).amax(dim=1),
            self.scorer(logits, feats).float(),
            v.argmax(dim=1),
            uni(v).float(),
            f.argmax(dim=1),
            uni(f).float(),
        )
