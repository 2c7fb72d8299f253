"""The synthetic world's label space: SemanticKITTI raw ids for known classes, 200+ for anomalies.

In-distribution classes keep SemanticKITTI's raw ids (moving agents use the 25x ``moving-*`` ids),
so a model trained here names classes like one trained on SemanticKITTI. Anomaly types get new raw
ids (200..209) which the learning map sends to 0 (ignore) and ``dataset.yaml`` lists in ``ood_ids``.
The sky, which SemanticKITTI does not label (its LiDAR never hits it), is a known class here with
the new raw id 100: a camera model that never learned the sky scores it as anomalous, and a vehicle's
camera sees the sky in every frame (Cityscapes and CARLA label it too).
*Near* anomalies resemble known classes (a trailer, an overturned car), *far* ones do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ood_perception.data.config import SEMANTIC_KITTI, DatasetConfig

# Raw ids (SemanticKITTI) of what the world contains.
UNLABELED = 0
CAR, BICYCLE, TRUCK, PERSON, BICYCLIST = 10, 11, 18, 30, 31
ROAD, SIDEWALK, BUILDING, FENCE, LANE_MARKING = 40, 48, 50, 51, 60
VEGETATION, TRUNK, TERRAIN, POLE, TRAFFIC_SIGN = 70, 71, 72, 80, 81
MOVING_CAR, MOVING_BICYCLIST, MOVING_PERSON = 252, 253, 254
#: The sky: not a SemanticKITTI class (raw id 100 is unused there); only the camera sees it.
SKY = 100
SKY_NAME = "sky"
SKY_COLOR_BGR = (180, 130, 70)  # Cityscapes' sky colour (70, 130, 180) in BGR

#: In-distribution classes in learning-id order (learning id = index + 1, train id = index).
ID_CLASSES: tuple[int, ...] = (CAR, BICYCLE, TRUCK, PERSON, BICYCLIST, ROAD, SIDEWALK, BUILDING, FENCE,
                               VEGETATION, TRUNK, TERRAIN, POLE, TRAFFIC_SIGN, SKY)
#: Raw ids mapped onto an in-distribution class (SemanticKITTI's own merges).
ALIASES: dict[int, int] = {LANE_MARKING: ROAD, MOVING_CAR: CAR, MOVING_BICYCLIST: BICYCLIST, MOVING_PERSON: PERSON}


@dataclass(frozen=True)
class AnomalyType:
    """One out-of-distribution object type."""

    raw_id: int
    name: str
    kind: str  # "near" (shaped like a known class) or "far" (unlike anything known)
    color_bgr: tuple[int, int, int]


ANOMALY_TYPES: tuple[AnomalyType, ...] = (
    AnomalyType(200, "trailer", "near", (40, 40, 230)),
    AnomalyType(201, "overturned-car", "near", (60, 20, 200)),
    AnomalyType(202, "stroller", "near", (120, 0, 255)),
    AnomalyType(203, "shopping-cart", "near", (200, 60, 255)),
    AnomalyType(204, "animal", "far", (0, 90, 255)),
    AnomalyType(205, "debris", "far", (0, 160, 255)),
    AnomalyType(206, "box", "far", (0, 220, 255)),
    AnomalyType(207, "tire", "far", (255, 60, 200)),
    AnomalyType(208, "barrel", "far", (255, 0, 120)),
    AnomalyType(209, "odd-shape", "far", (255, 255, 0)),
)
ANOMALY_BY_NAME: dict[str, AnomalyType] = {a.name: a for a in ANOMALY_TYPES}
ANOMALY_BY_ID: dict[int, AnomalyType] = {a.raw_id: a for a in ANOMALY_TYPES}


def world_dataset_config(splits: dict[str, list[str]] | None = None, extra: dict[str, Any] | None = None) -> DatasetConfig:
    """The :class:`DatasetConfig` of synthetic datasets (written as their ``dataset.yaml``)."""
    names = SEMANTIC_KITTI["labels"]
    colors = SEMANTIC_KITTI["color_map"]
    used = (UNLABELED, *ID_CLASSES, *ALIASES)
    labels = {i: names[i] for i in used if i != SKY}
    color_map = {i: list(colors[i]) for i in used if i != SKY}
    labels[SKY] = SKY_NAME
    color_map[SKY] = list(SKY_COLOR_BGR)
    learning_map = {UNLABELED: 0}
    for lid, raw in enumerate(ID_CLASSES, 1):
        learning_map[raw] = lid
    for raw, target in ALIASES.items():
        learning_map[raw] = learning_map[target]
    for a in ANOMALY_TYPES:
        labels[a.raw_id] = a.name
        color_map[a.raw_id] = list(a.color_bgr)
        learning_map[a.raw_id] = 0
    learning_map_inv = {0: 0, **{lid: raw for lid, raw in enumerate(ID_CLASSES, 1)}}
    more = {
        "ood_near_ids": [a.raw_id for a in ANOMALY_TYPES if a.kind == "near"],
        "ood_far_ids": [a.raw_id for a in ANOMALY_TYPES if a.kind == "far"],
    }
    more.update(extra or {})
    return DatasetConfig(labels, color_map, learning_map, learning_map_inv,
                         ood_ids=[a.raw_id for a in ANOMALY_TYPES], splits=splits or {}, extra=more)
