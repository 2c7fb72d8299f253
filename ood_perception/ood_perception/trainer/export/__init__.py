"""ONNX export of trained models with their OOD scorer as one graph plus ``model.json``, split by layer.

* :mod:`.core` - :func:`export_model`, the generic core for any model kind;
* :mod:`.segmentation` - :func:`export_segmentation` (+ ``_from_data``: scorer fitting, threshold calibration);
* :mod:`.recognition` - :func:`export_recognition` (+ ``_from_data``: held-out evaluation in ``model.json``).
"""

from ood_perception.trainer.export.core import DEFAULT_OPSET, ONNX_NAME, TORCH_NAME, export_model
from ood_perception.trainer.export.recognition import (
    FLOW_SCALE,
    RECOGNITION_NORMALISATION,
    evaluate_recognition_wrapper,
    export_recognition,
    export_recognition_from_data,
)
from ood_perception.trainer.export.segmentation import (
    build_scored_segmentation,
    calibrate_on_batches,
    dataset_batches,
    export_segmentation,
    export_segmentation_from_data,
    fit_scorer,
)

__all__ = [
    "DEFAULT_OPSET",
    "FLOW_SCALE",
    "ONNX_NAME",
    "RECOGNITION_NORMALISATION",
    "TORCH_NAME",
    "build_scored_segmentation",
    "calibrate_on_batches",
    "dataset_batches",
    "evaluate_recognition_wrapper",
    "export_model",
    "export_recognition",
    "export_recognition_from_data",
    "export_segmentation",
    "export_segmentation_from_data",
    "fit_scorer",
]
