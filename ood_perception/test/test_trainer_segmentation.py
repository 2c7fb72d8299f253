"""Segmentation trainer: learning on a toy set, exact resume, clear data errors, CLI wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_perception.trainer.segmentation import load_config, train
from ood_perception.trainer.toy import make_toy_dataset

TINY = {"camera_backbone": "tiny", "lidar_width": 8, "camera_channels": 16, "lidar_channels": 16,
        "head_channels": 16, "tiny_width": 8}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return make_toy_dataset(root / "data", {"00": 8, "01": 4}), root / "cache"


def _cfg(cache, **over):
    base = {"model": TINY, "input_size": [32, 64], "batch_size": 4, "epochs": 2, "lr": 3e-3,
            "data": {"cache_dir": str(cache)}, "checkpoint_every": 1000}
    base.update(over)
    return load_config(None, base)


def _miou(model, data) -> float:
    from ood_perception.trainer.evaluate import evaluate_model

    ck = {"class_names": data.config.class_names}
    m, _ = evaluate_model(model, ck, data, scorers=("maxlogit",))
    return m["segmentation"]["pixel"]["fused"]["miou"]


def test_training_lowers_loss_and_improves_miou(toy, tmp_path) -> None:
    from ood_perception.models import build_model, load_checkpoint
    from ood_perception.trainer.seg_data import SegmentationData

    root, cache = toy
    cfg = _cfg(cache, epochs=8, lr=1e-2, synthesis={"method": "none"})
    summary = train(cfg, root, tmp_path / "run", show_progress=False)
    assert summary["finished"] and summary["steps"] == 16
    losses = [h["total"] for h in summary["history"]]
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    data = SegmentationData(root, "train", (32, 64), cache, show_progress=False)
    model, ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    torch.manual_seed(0)
    untrained = build_model(ckpt["model_config"]).eval()
    trained_miou, untrained_miou = _miou(model, data), _miou(untrained, data)
    assert trained_miou > untrained_miou + 0.15, (trained_miou, untrained_miou)
    assert ckpt["class_names"] == ["car", "road", "building"] and ckpt["input_size"] == [32, 64]
    # the toy train frames each show its one anomaly type: model.json will list it (issue 17)
    assert ckpt["outlier_types"] == data.anomaly_types_seen() == ["anomaly"]


@pytest.mark.parametrize("method,a2d", [("fm", False), ("npmix", True)])
def test_resume_reproduces_the_uninterrupted_run(toy, tmp_path, method, a2d) -> None:
    root, cache = toy
    cfg = _cfg(cache, synthesis={"method": method, "npmix": {"anchors": 32, "queue_size": 16, "k": 3, "alpha": 10.0}},
               a2d={"enabled": a2d, "gamma2": 0.5, "max_pixels": 256}, epochs=2, batch_size=3)
    # 8 frames / batch 3 -> 3 steps per epoch; stop mid-epoch (step 2), i.e. a "kill" after a checkpoint
    full = train(cfg, root, tmp_path / "full", show_progress=False)
    part = train(dict(cfg, max_steps=2), root, tmp_path / "resumed", show_progress=False)
    assert part["steps"] == 2 and not part["finished"]
    rest = train(cfg, root, tmp_path / "resumed", show_progress=False)
    assert rest["finished"] and rest["steps"] == full["steps"] == 6
    assert [h["total"] for h in rest["history"]] == [h["total"] for h in full["history"]]
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_changed_setup(toy, tmp_path) -> None:
    root, cache = toy
    train(_cfg(cache, max_steps=1), root, tmp_path / "r", show_progress=False)
    with pytest.raises(ValueError, match="synthesis"):
        train(_cfg(cache, synthesis={"method": "none"}), root, tmp_path / "r", show_progress=False)


def test_clear_errors_for_empty_and_mislabelled_data(tmp_path) -> None:
    from ood_perception.data import DatasetConfig
    from ood_perception.trainer.seg_data import SegmentationData
    from ood_perception.trainer.toy import TOY_LABELS

    empty = tmp_path / "empty"
    (empty / "sequences" / "00" / "velodyne").mkdir(parents=True)
    DatasetConfig.from_dict(TOY_LABELS).write_yaml(empty / "dataset.yaml")
    with pytest.raises(ValueError, match="no frames"):
        SegmentationData(empty, "train", (32, 64), tmp_path / "c", show_progress=False)
    root = make_toy_dataset(tmp_path / "bad", {"00": 2})
    wrong = dict(TOY_LABELS, labels={0: "unlabeled", 7: "x"}, learning_map={0: 0, 7: 1},
                 learning_map_inv={0: 0, 1: 7}, ood_ids=[])
    DatasetConfig.from_dict(wrong).write_yaml(root / "dataset.yaml")
    with pytest.raises(ValueError, match="unknown to the label space"):
        SegmentationData(root, "train", (32, 64), tmp_path / "c", show_progress=False)
    with pytest.raises(ValueError, match="no sequences"):
        SegmentationData(tmp_path, None, (32, 64), tmp_path / "c", show_progress=False)
    with pytest.raises(ValueError, match="unknown training setting 'synthesis.bogus'"):
        load_config(None, {"synthesis": {"bogus": 1}})


def test_train_cli_offers_segmentation_and_runs(toy, tmp_path, capsys) -> None:
    import argparse

    from ood_perception.commands import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers(dest="command"))
    assert train_cmd.task_module("segmentation").__name__ == "ood_perception.trainer.segmentation"

    def main(argv):
        args = parser.parse_args(argv)
        return args.func(args)

    root, cache = toy
    rc = main(["train", "segmentation", "--data", str(root), "--out", str(tmp_path / "cli"), "--backbone", "tiny",
               "--input-size", "32", "64", "--max-steps", "1", "--cache-dir", str(cache), "--quiet",
               "--set", "model.lidar_width=8", "--set", "model.camera_channels=16", "--set", "model.lidar_channels=16",
               "--set", "model.head_channels=16", "--set", "model.tiny_width=8", "--synthesis", "none"])
    assert rc == 0 and (tmp_path / "cli" / "last.pt").is_file()
    assert "trained 1 steps" in capsys.readouterr().out
    assert any((tmp_path / "cli" / "tensorboard").iterdir())


def test_carla_ood_schema_gives_the_same_samples(toy, tmp_path) -> None:
    from ood_perception.trainer.seg_data import SegmentationData
    from ood_perception.trainer.toy import TOY_LABELS

    root, _ = toy
    schema = {"sequences": ["00"], "frames": "{sequence}/velodyne/*.bin", "points": "{sequence}/velodyne/{frame}.bin",
              "point_labels": "{sequence}/labels/{frame}.label", "image": "{sequence}/image_2/{frame}.png",
              "pixel_labels": "{sequence}/image_2_label/{frame}.png",
              "calib": {"file": "{sequence}/calib.txt", "camera": "P2"}, **TOY_LABELS}
    via_schema = SegmentationData(root / "sequences", None, (32, 64), tmp_path / "c", schema=schema, show_progress=False)
    via_kitti = SegmentationData(root, "train", (32, 64), tmp_path / "c", show_progress=False)
    assert len(via_schema) == len(via_kitti) == 8
    a, b = via_schema[3], via_kitti[3]
    np.testing.assert_array_equal(a.target, b.target)
    np.testing.assert_array_equal(a.pixel_ood, b.pixel_ood)
    np.testing.assert_allclose(a.lidar, b.lidar, atol=1e-5)
    np.testing.assert_array_equal(a.flat_index, b.flat_index)


def test_outlier_exposure_pushes_the_training_anomalies_to_uniform(toy, tmp_path) -> None:
    """Outlier exposure on the toy train split's anomaly pixels: the term is logged and falls, and the
    fused head's normalised entropy on those pixels ends higher than without exposure (same seed)."""
    from ood_perception.losses import normalised_entropy
    from ood_perception.models import load_checkpoint
    from ood_perception.trainer.seg_data import SegmentationData, collate

    root, cache = toy
    ent = {}
    for name, oe in (("plain", False), ("oe", True)):
        cfg = _cfg(cache, epochs=6, lr=1e-2, synthesis={"method": "none"},
                   outlier_exposure={"enabled": oe, "weight": 1.0})
        summary = train(cfg, root, tmp_path / name, show_progress=False)
        hist = summary["history"]
        assert ("outlier_exposure" in hist[0]) == oe
        if oe:
            assert np.mean([h["outlier_exposure"] for h in hist[-4:]]) < np.mean([h["outlier_exposure"] for h in hist[:4]])
        model, ckpt = load_checkpoint(tmp_path / name / "model.pt")
        data = SegmentationData(root, "train", (32, 64), cache, show_progress=False)
        batch = collate([data[i] for i in range(len(data))], ckpt["mean"], ckpt["std"])
        with torch.no_grad():
            logits = model(batch["image"], batch["lidar"])["logits"]
        ent[name] = float(normalised_entropy(logits, dim=1)[batch["pixel_ood"]].mean())
    assert ent["oe"] > ent["plain"] and ent["oe"] > 0.98, ent  # uniform = 1
