"""Which label map scores a bag's labels, and whether it is the model's label space.

A bag's raw label ids mean nothing without their dataset's map (raw id -> class, OOD ids), and
the model's class map (``model.json`` ``class_names``) must be that map's classes for mIoU and the
anomaly metrics to mean anything. Replay finds the map, in this order:

1. ``--dataset-config FILE`` (explicit);
2. the ``dataset.yaml`` of the ``--labels`` folder;
3. the bag's own metadata (``custom_data``, written by ``ood-perception synth --bag``, see
   :mod:`ood_perception.data.bag`);
4. a ``dataset.yaml`` next to the bag: in its folder or up to two folders above (``synth`` writes
   ``OUT/dataset.yaml`` and ``OUT/bags/XX``);
5. SemanticKITTI's map, only when the model predicts SemanticKITTI's classes.

A map whose in-distribution class names differ from the model's is refused with one line naming
both. When no map is found and the model's classes are not SemanticKITTI's, the labels are not
scored (replay still writes its outputs) and ``metrics.json`` says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ood_perception.data import DatasetConfig
from ood_perception.data.bag_reader import label_map_of

#: Folders above a bag searched for a ``dataset.yaml`` (``OUT/bags/XX`` -> ``OUT``).
SEARCH_UP = 2


class LabelMapMismatch(ValueError):
    """The labels' map and the model's classes differ (a user error: one line)."""


@dataclass
class LabelSpace:
    """The label map chosen for a bag (None: labels are not scored) and where it came from."""

    config: DatasetConfig | None
    source: str


def dataset_yaml_near(bag: str | Path) -> Path | None:
    """The nearest ``dataset.yaml`` in the bag's folder or up to :data:`SEARCH_UP` folders above it
    (for a single storage file, its folder counts as the bag)."""
    bag = Path(bag).resolve()
    start = bag if bag.is_dir() else bag.parent
    for d in [start, *list(start.parents)[:SEARCH_UP]]:
        if (d / "dataset.yaml").is_file():
            return d / "dataset.yaml"
    return None


def _names(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def find_label_map(bag: str | Path, explicit: str | Path | None = None, folder_config: DatasetConfig | None = None,
                   model_classes: Sequence[str] | None = None) -> LabelSpace:
    """The label map for ``bag``'s labels (see the module docstring for the order).

    Raises:
        FileNotFoundError / ValueError: an explicit or found ``dataset.yaml`` is unreadable.
    """
    if explicit is not None:
        return LabelSpace(DatasetConfig.from_yaml(explicit), f"--dataset-config {explicit}")
    if folder_config is not None:
        return LabelSpace(folder_config, "the --labels folder's dataset.yaml")
    carried = label_map_of(bag)
    if carried is not None:
        return LabelSpace(carried, "the bag's metadata")
    near = dataset_yaml_near(bag)
    if near is not None:
        return LabelSpace(DatasetConfig.from_yaml(near), str(near))
    kitti = DatasetConfig.semantic_kitti()
    if model_classes is None or list(model_classes) == kitti.class_names:
        return LabelSpace(kitti, "SemanticKITTI (default)")
    return LabelSpace(None, "none: the bag carries no label map and no dataset.yaml is next to it "
                            "(give --dataset-config to score its labels)")


def check_model_classes(space: LabelSpace, model_classes: Sequence[str] | None, model: str, bag: str | Path) -> None:
    """Refuse a label map whose classes are not the model's.

    Raises:
        LabelMapMismatch: one line naming the bag's map (source, classes) and the model's classes.
    """
    if space.config is None or model_classes is None:
        return
    have, want = space.config.class_names, list(model_classes)
    if have == want:
        return
    raise LabelMapMismatch(
        f"{bag}: its labels' map ({space.source}: {len(have)} classes {_names(have)}) is not the label space of "
        f"the model {model} ({len(want)} classes {_names(want)}); replay with the model trained on these labels, "
        "or give the labels' dataset.yaml with --dataset-config"
    )
