"""Distillation trains only the joint (fused) head; experts stay bit-identical (issue 8 acceptance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_perception.models.recognition import RecognitionConfig, build_recognition_model
from ood_perception.trainer.distill import DistillConfig, distill_recognition_head, distill_segmentation


def _snapshot(model, skip):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(skip)}


@pytest.mark.parametrize("teacher,fm", [("weighted", False), ("best", True)])
def test_recognition_distillation_trains_only_the_joint_head(teacher, fm):
    torch.manual_seed(0)
    model = build_recognition_model(RecognitionConfig(num_classes=4, embed_dim=8, width=4))
    before = _snapshot(model, "joint_head.")
    head0 = {k: v.clone() for k, v in model.joint_head.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (40,), generator=g)
    zv = torch.relu(torch.randn(40, 8, generator=g) + torch.nn.functional.one_hot(y, 8).float() * 2)
    zf = torch.relu(torch.randn(40, 8, generator=g))
    hist = distill_recognition_head(model, zv, zf, y, DistillConfig(epochs=3, lr=1e-2, teacher=teacher,
                                                                    feature_mixing=fm, fm_channels=2))
    after = _snapshot(model, "joint_head.")
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"expert parameter {k} changed"
    assert any(not torch.equal(head0[k], v) for k, v in model.joint_head.state_dict().items())
    assert len(hist) == 3 and all(np.isfinite(h["loss"]) for h in hist)
    assert 0.0 <= hist[0]["w_video"] <= 1.0 and hist[0]["w_video"] + hist[0]["w_flow"] == pytest.approx(1.0)
    assert ("fm_entropy" in hist[0]) == fm
    assert all(p.requires_grad for p in model.parameters())  # restored for later training


def test_distilled_student_moves_towards_the_teacher():
    # with CE switched off by a degenerate setup the KD terms alone must reduce KL to the teacher
    torch.manual_seed(0)
    model = build_recognition_model(RecognitionConfig(num_classes=3, embed_dim=6, width=2, dropout=0.0))
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (60,), generator=g)
    zv, zf = torch.rand(60, 6, generator=g), torch.rand(60, 6, generator=g)
    from ood_perception.distill import full_kl, teacher_probs

    def kl():
        with torch.no_grad():
            p, _ = teacher_probs([model.video_head(zv), model.flow_head(zf)], y, ignore_index=None)
            return float(full_kl(model.joint_head(torch.cat([zv, zf], 1)), p, y, ignore_index=None))

    k0 = kl()
    distill_recognition_head(model, zv, zf, y, DistillConfig(alpha=4.0, beta=4.0, epochs=30, lr=1e-2, reinit=False))
    assert kl() < k0


def test_segmentation_distillation_trains_only_the_classifier():
    from ood_perception.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, camera_backbone="tiny", camera_channels=8, lidar_channels=8,
                                    lidar_width=4, head_channels=8, tiny_width=4))
    before = _snapshot(model, "fusion.classifier.")
    cls0 = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        target = torch.randint(0, 3, (2, 32, 64), generator=g)
        target[:, :8] = 255  # ignored rows
        batches.append((torch.randn(2, 3, 32, 64, generator=g), torch.randn(2, 6, 32, 64, generator=g), target))
    hist = distill_segmentation(model, batches, DistillConfig(epochs=2, lr=1e-2))
    after = _snapshot(model, "fusion.classifier.")
    for k in before:
        assert torch.equal(before[k], after[k]), f"frozen parameter/buffer {k} changed"
    assert any(not torch.equal(cls0[k], v) for k, v in model.classifier.state_dict().items())
    assert len(hist) == 2 and hist[0]["w_camera"] + hist[0]["w_lidar"] == pytest.approx(1.0)
    # all pixels ignored -> clear error
    empty = [(b[0], b[1], torch.full_like(b[2], 255)) for b in batches]
    with pytest.raises(ValueError, match="labelled pixels"):
        distill_segmentation(model, empty, DistillConfig(epochs=1))


def test_config_validation():
    with pytest.raises(ValueError, match="teacher"):
        DistillConfig(teacher="oracle")
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=-1)


def test_cached_segmentation_distillation_matches_the_full_model_step():
    """Training on cached features = training through the frozen network (one full-batch Adam step)."""
    import torch.nn.functional as F

    from ood_perception.models import ModelConfig, build_model
    from ood_perception.trainer.distill import cache_segmentation_features, distill_segmentation_cached

    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, camera_backbone="tiny", camera_channels=8, lidar_channels=8,
                                    lidar_width=4, head_channels=8, tiny_width=4)).eval()
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 3, (3, 32, 64), generator=g)
    target[:, :6] = 255
    batch = (torch.randn(3, 3, 32, 64, generator=g), torch.randn(3, 6, 32, 64, generator=g), target)
    cache = cache_segmentation_features(model, [batch])
    with torch.no_grad():
        out = model(batch[0], batch[1])
    up = F.interpolate(cache["camera_logits"], size=(32, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(up, out["camera_logits"], atol=1e-6)
    assert torch.allclose(cache["features"], out["features"], atol=1e-6)
    assert torch.equal(cache["target"].long(), target)
    cls0 = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    before = _snapshot(model, "fusion.classifier.")
    cfg = DistillConfig(epochs=1, lr=1e-2, batch_size=3, teacher="uniform")
    h_full = distill_segmentation(model, [batch], cfg)
    full = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    model.classifier.load_state_dict(cls0)
    h_cached = distill_segmentation_cached(model.classifier, cache, cfg)
    for k, v in model.classifier.state_dict().items():
        assert torch.allclose(v, full[k], atol=1e-6), k
    assert h_cached[0]["loss"] == pytest.approx(h_full[0]["loss"], rel=1e-5)
    after = _snapshot(model, "fusion.classifier.")
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="labelled pixels"):
        distill_segmentation_cached(model.classifier, {**cache, "target": torch.full_like(cache["target"], 255)}, cfg)
