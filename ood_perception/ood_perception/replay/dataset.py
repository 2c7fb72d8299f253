"""Replay a SemanticKITTI-layout dataset (``ood-perception synth`` output) through the fusion pipeline.

The frames come from disk instead of a rosbag: each sequence is one drive, its frames in stamp
order, the camera intrinsics and LiDAR -> camera extrinsics from its ``calib.txt`` (the same values
a ``synth --bag`` recording carries). There is no synchroniser (the dataset's frames are already
paired), so this is :meth:`FusionPipeline.process` per frame, the node's decision path without the
transport; ``ood-perception calibrate`` and ``bench/alert_eval.py`` use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from ood_perception.data import Frame
from ood_perception.data.semantickitti import SemanticKittiReader
from ood_perception.pipeline import FusionFrame, FusionPipeline, FusionResult


def replay_dataset(
    pipeline: FusionPipeline,
    root: str | os.PathLike[str],
    sequences: Iterable[str] | None = None,
    max_frames: int | None = None,
) -> Iterator[tuple[Frame, FusionResult]]:
    """Yield ``(frame, result)`` for every frame of the dataset's sequences (all, or ``sequences``),
    sequence by sequence; the pipeline is reset at the start of each sequence (a new drive).

    Args:
        pipeline: the pipeline (its configuration is the caller's).
        root: dataset root (``dataset.yaml`` + ``sequences/``).
        sequences: sequence names to replay (default: all).
        max_frames: at most this many frames per sequence.
    """
    reader = SemanticKittiReader(root, list(sequences) if sequences is not None else None)
    current, count = None, 0
    for i in range(len(reader)):
        frame = reader[i]
        if frame.sequence != current:
            pipeline.reset()
            current, count = frame.sequence, 0
        if max_frames is not None and count >= max_frames:
            continue
        count += 1
        stamp = float(frame.stamp) if frame.stamp is not None else 0.1 * count
        result = pipeline.process(FusionFrame(stamp=stamp, image=frame.image, points=frame.points, calib=frame.calib))
        yield frame, result
