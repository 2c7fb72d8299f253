"""prepare_inputs / resize_labels against independent numpy computations."""

from __future__ import annotations

import numpy as np
import pytest

from ood_perception.geometry import Calibration
from ood_perception.geometry.inputs import IMAGENET_MEAN, IMAGENET_STD, prepare_inputs, resize_labels


def _calib():
    return Calibration(np.array([[100.0, 0, 64], [0, 100.0, 32], [0, 0, 1]]), 128, 64,
                       np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64))


def test_prepare_inputs_halves_image_and_calibration():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    # a point straight ahead at 10 m and one 1 m left: pixels (64, 32) and (54, 32) at full size
    pts = np.array([[10.0, 0.0, 0.0, 0.5], [10.0, 1.0, 0.0, 0.25], [-5.0, 0.0, 0.0, 1.0]], dtype=np.float32)
    image, lidar, flat = prepare_inputs(img, pts, _calib(), input_size=(32, 64))
    assert image.shape == (3, 32, 64) and image.dtype == np.float32
    # INTER_AREA at an exact factor 2 is the 2x2 block mean
    block = img.astype(np.float64).reshape(32, 2, 64, 2, 3).mean(axis=(1, 3))
    expect = ((block / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(image, expect, atol=2.5 / 255 / 0.224)
    assert lidar.shape == (6, 32, 64)
    assert flat.tolist() == [16 * 64 + 32, 16 * 64 + 27, -1]
    np.testing.assert_allclose(lidar[:, 16, 32], [10, 0, 0, 10, 0.5, 1])
    np.testing.assert_allclose(lidar[3, 16, 27], np.hypot(10, 1), rtol=1e-6)
    assert lidar[5].sum() == 2


def test_prepare_inputs_native_size_and_errors():
    img = np.full((64, 128, 3), 255, np.uint8)
    image, lidar, _ = prepare_inputs(img, np.zeros((0, 4), np.float32), _calib())
    np.testing.assert_allclose(image[:, 0, 0], (1 - np.array(IMAGENET_MEAN)) / IMAGENET_STD, rtol=1e-6)
    assert lidar.shape == (6, 64, 128) and not lidar.any()
    with pytest.raises(ValueError, match="calibration"):
        prepare_inputs(img[:10], np.zeros((0, 4)), _calib())
    with pytest.raises(ValueError, match="size"):
        prepare_inputs(img, np.zeros((0, 4)), _calib(), input_size=(0, 5))


def test_resize_labels_nearest():
    lab = np.arange(64 * 128, dtype=np.uint16).reshape(64, 128) % 300
    out = resize_labels(lab, (32, 64))
    np.testing.assert_array_equal(out, lab[::2, ::2])
    assert set(np.unique(out)) <= set(np.unique(lab))  # never blended
    up = resize_labels(lab[:4, :4], (8, 8))
    np.testing.assert_array_equal(up, np.repeat(np.repeat(lab[:4, :4], 2, 0), 2, 1))
    big = resize_labels(lab.astype(np.uint32) + 70000, (32, 64))
    np.testing.assert_array_equal(big, lab[::2, ::2].astype(np.uint32) + 70000)
