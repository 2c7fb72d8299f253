"""Rendered frames: camera/LiDAR label consistency through calib.txt, anomaly point share, weather effects."""

from __future__ import annotations

import numpy as np
import pytest

from ood_perception.data import SemanticKittiReader
from ood_perception.geometry import project_points
from ood_perception.world.config import WorldConfig
from ood_perception.world.labels import world_dataset_config
from ood_perception.world.render import SequenceRenderer
from ood_perception.world.scenario import plan_dataset
from ood_perception.world.synth import generate_dataset

DC = world_dataset_config()


def _agreement(frame) -> float:
    proj = project_points(frame.points, frame.calib)
    vis = proj.visible
    assert vis.sum() > 5000
    pix = frame.pixel_labels[proj.v[vis], proj.u[vis]]
    return float(np.mean(pix == (frame.point_labels[vis] & 0xFFFF)))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, sequences=1, frames=3, seed=11, split="test", weathers=["night"], progress=False)
    return out


def test_point_labels_match_pixel_labels_through_calib_txt(written):
    reader = SemanticKittiReader(written)  # calibration from calib.txt (P2, Tr)
    assert len(reader) == 3
    for frame in reader:
        assert frame.image.shape == (256, 512, 3) and frame.points.shape[0] > 40000
        assert _agreement(frame) >= 0.95


@pytest.fixture(scope="module")
def anomaly_frames():
    plan = plan_dataset(WorldConfig(), sequences=3, frames=16, seed=2, split="test")
    out = []
    for seq in plan.sequences:
        r = SequenceRenderer(seq, plan.config)
        eps = seq.episodes
        assert eps
        out.append((r.render(eps[0].start), True))
        clean = next(i for i in range(seq.frames) if not seq.has_anomaly(i))
        out.append((r.render(clean), False))
    return out


def test_anomaly_point_share_and_labels(anomaly_frames):
    for frame, has in anomaly_frames:
        share = DC.ood_mask(frame.point_labels).mean()
        if has:
            assert 0.005 <= share <= 0.10, share
            assert DC.ood_mask(frame.pixel_labels).any()  # the camera sees them too
            inst = frame.point_labels[DC.ood_mask(frame.point_labels)] >> 16
            assert (inst >= 1000).all()
        else:
            assert share == 0.0 and not DC.ood_mask(frame.pixel_labels).any()
        assert _agreement(frame) >= 0.95
        # train ids: every in-distribution class is 0..K-1, anomalies are ignored
        tid = DC.to_train_ids(frame.point_labels)
        assert set(np.unique(tid)) <= set(range(DC.num_classes)) | {255}


def test_weather_changes_both_sensors_not_the_geometry():
    frames = {}
    for w in ("day", "fog", "night"):
        plan = plan_dataset(WorldConfig(), sequences=1, frames=1, seed=4, split="train", weathers=[w])
        frames[w] = SequenceRenderer(plan.sequences[0], plan.config).render(0)
    day, fog, night = frames["day"], frames["fog"], frames["night"]
    np.testing.assert_array_equal(day.pixel_labels, fog.pixel_labels)  # same street, same camera labels
    assert fog.image.std() < 0.7 * day.image.std()  # fog washes out contrast
    assert night.image.mean() < 0.6 * day.image.mean()
    assert fog.points.shape[0] < 0.95 * day.points.shape[0]  # attenuation and dropouts
    spurious = (fog.point_labels & 0xFFFF) == 0
    assert spurious.any() and np.linalg.norm(fog.points[spurious, :3], axis=1).max() < 30
    assert not ((day.point_labels & 0xFFFF) == 0).any()
