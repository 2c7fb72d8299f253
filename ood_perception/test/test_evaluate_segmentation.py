"""evaluate: metrics equal an independent computation from the model's outputs; files written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from ood_perception.models import build_model
from ood_perception.trainer.toy import make_toy_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ev")
    root = make_toy_dataset(tmp / "data", {"00": 4, "01": 3}, seed=3)
    torch.manual_seed(0)
    model = build_model({"num_classes": 3, "camera_backbone": "tiny", "lidar_width": 8, "camera_channels": 16,
                         "lidar_channels": 16, "head_channels": 16, "tiny_width": 8}).eval()
    ckpt = tmp / "m.pt"
    torch.save({"model_config": model.config.to_dict(), "state_dict": model.state_dict(),
                "class_names": ["car", "road", "building"], "colors": [[0, 0, 255], [128, 128, 128], [255, 0, 0]],
                "input_size": [32, 64], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, ckpt)
    return root, ckpt, model, tmp


def test_metrics_match_independent_computation(setup) -> None:
    from ood_perception.trainer.evaluate import evaluate
    from ood_perception.trainer.seg_data import SegmentationData, collate

    root, ckpt, model, tmp = setup
    out = tmp / "eval"
    m = evaluate(ckpt, root, out, scorers=("maxlogit", "msp", "himplos"), cache_dir=str(tmp / "c"),
                 overlays=2, show_progress=False)
    assert m["split"] == "test" and m["num_frames"] == 3
    data = SegmentationData(root, "test", (32, 64), tmp / "c", show_progress=False)
    batch = collate([data[i] for i in range(len(data))], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        logits = model(batch["image"], batch["lidar"])["logits"].numpy()
    tgt, ood = batch["target"].numpy(), batch["pixel_ood"].numpy()
    sel = (tgt != 255) | ood
    score = -logits.max(1)[sel]
    assert m["ood"]["pixel"]["maxlogit"]["auroc"] == pytest.approx(roc_auc_score(ood[sel], score), abs=1e-9)
    # FPR95: share of ID pixels at or above the score catching 95% of OOD
    o = np.sort(score[ood[sel]])
    thr = o[int(np.floor(0.05 * o.size))]
    fpr = np.mean(score[~ood[sel]] >= thr)
    assert m["ood"]["pixel"]["maxlogit"]["fpr95"] == pytest.approx(fpr, abs=0.02)
    pred = logits.argmax(1)
    ious = []
    for c in range(3):
        inter = np.sum((pred == c) & (tgt == c))
        union = np.sum(((pred == c) | (tgt == c)) & (tgt != 255))
        if union:
            ious.append(inter / union)
    assert m["segmentation"]["pixel"]["fused"]["miou"] == pytest.approx(np.mean(ious), abs=1e-9)
    # point level: scores gathered at each labelled in-view point's pixel
    pts_scores, pts_ood = [], []
    for b, s in enumerate(batch["samples"]):
        keep = (s.flat_index >= 0) & ((s.point_target != 255) | s.point_ood)
        pts_scores.append(-logits[b].max(0).ravel()[s.flat_index[keep]])
        pts_ood.append(s.point_ood[keep])
    ref = roc_auc_score(np.concatenate(pts_ood), np.concatenate(pts_scores))
    assert m["ood"]["point"]["maxlogit"]["auroc"] == pytest.approx(ref, abs=1e-9)
    assert 0.0 <= m["ood"]["pixel"]["himplos"]["auroc"] <= 1.0
    for f in ("metrics.json", "report.md", "roc_pixel.png", "hist_pixel.png", "roc_point.png", "overlay_00.png"):
        assert (out / f).is_file(), f
    assert json.loads((out / "metrics.json").read_text())["ood"]["pixel"]["msp"]["n_ood"] == int(ood.sum())
    assert "| pixel | maxlogit |" in (out / "report.md").read_text()


def test_evaluate_rejects_other_label_space(setup, tmp_path) -> None:
    from ood_perception.trainer.evaluate import evaluate

    root, ckpt, _, _ = setup
    bad = torch.load(ckpt, weights_only=True)
    bad["class_names"] = ["a", "b", "c"]
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="differ from the checkpoint"):
        evaluate(tmp_path / "bad.pt", root, tmp_path / "o", scorers=("maxlogit",), cache_dir=str(tmp_path / "c"),
                 plots=False, show_progress=False)


def test_himplos_is_skipped_with_a_note_on_data_without_a_train_split(setup, tmp_path, capsys) -> None:
    """A test-only dataset (e.g. a world rendered with ``synth --split test``): the default scorers
    include HIMPLoS, which is fitted on the data's train split; it is left out with one line."""
    from ood_perception.trainer.evaluate import evaluate

    root, ckpt, _, _ = setup
    test_only = tmp_path / "test_only"
    shutil.copytree(root, test_only)
    cfg = yaml.safe_load((test_only / "dataset.yaml").read_text())
    cfg["splits"] = {"test": cfg["splits"]["test"]}
    (test_only / "dataset.yaml").write_text(yaml.safe_dump(cfg))
    m = evaluate(ckpt, test_only, tmp_path / "eval", scorers=("maxlogit", "himplos"), cache_dir=str(tmp_path / "c"),
                 plots=False, show_progress=False)
    assert "himplos skipped" in capsys.readouterr().err
    assert set(m["ood"]["pixel"]) == {"maxlogit"}


def test_per_frame_ood_iou_follows_the_empty_set_convention() -> None:
    """Per-frame mask IoU (the report's ranking): 1 when neither anomaly nor flag is present, 0 for
    flags on an anomaly-free frame, the plain IoU otherwise."""
    from types import SimpleNamespace

    from ood_perception.data import DatasetConfig
    from ood_perception.evaluation.segmentation import MetricsAccumulator

    d = DatasetConfig.semantic_kitti().to_dict()
    d["labels"][200], d["learning_map"][200], d["ood_ids"] = "anomaly", 0, [200]
    cfg = DatasetConfig.from_dict(d)
    acc = MetricsAccumulator(cfg, threshold=0.5, input_hw=(4, 6))
    raw = np.full((4, 6), 40, np.uint32)  # road everywhere

    def frame(mask):
        score = np.where(mask, 1.0, 0.0).astype(np.float32)
        return SimpleNamespace(score=score, mask=(mask * 255).astype(np.uint8), classes=np.zeros((4, 6), np.int32))

    none = np.zeros((4, 6), bool)
    assert acc.add(frame(none), raw, None)["ood_iou"] == 1.0
    flagged = none.copy()
    flagged[0, 0] = True
    assert acc.add(frame(flagged), raw, None)["ood_iou"] == 0.0
    anomalous = raw.copy()
    anomalous[1:3, 1:3] = 200
    half = none.copy()
    half[1:3, 1] = True  # 2 of the 4 anomaly pixels flagged, nothing else
    assert acc.add(frame(half), anomalous, None)["ood_iou"] == pytest.approx(0.5)


def test_a_long_labelled_run_keeps_a_bounded_evenly_thinned_sample() -> None:
    """Past ``max_samples`` the pixel scores are thinned (every k-th of each frame, k doubling): the
    store stays under the cap, the summary says so and its AUROC stays near the exact one; merged
    accumulators and a state round trip keep the thinning."""
    from types import SimpleNamespace

    from ood_perception.data import DatasetConfig
    from ood_perception.evaluation.segmentation import MetricsAccumulator
    from ood_perception.metrics import ood_metrics

    d = DatasetConfig.semantic_kitti().to_dict()
    d["labels"][200], d["learning_map"][200], d["ood_ids"] = "anomaly", 0, [200]
    cfg = DatasetConfig.from_dict(d)
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(40):
        raw = np.full((16, 32), 40, np.uint32)
        raw[4:10, 8:20] = 200
        score = (rng.normal(size=(16, 32)) + 1.5 * (raw == 200)).astype(np.float32)
        frames.append((SimpleNamespace(score=score, mask=np.zeros((16, 32), np.uint8), classes=np.zeros((16, 32), np.int32)), raw))
    exact = ood_metrics(np.concatenate([f.score.ravel() for f, _ in frames]), np.concatenate([(r == 200).ravel() for _, r in frames]))
    full = MetricsAccumulator(cfg, input_hw=(16, 32))
    small = MetricsAccumulator(cfg, input_hw=(16, 32), max_samples=3000)
    for f, raw in frames:
        full.add(f, raw, None)
        small.add(f, raw, None)
    assert "sampled" not in full.summary()["pixel"] and full.summary()["pixel"]["auroc"] == pytest.approx(exact["auroc"])
    pix = small.summary()["pixel"]
    assert pix["sampled"]["of"] == 40 * 512 and pix["sampled"]["kept"] <= 3000 and pix["sampled"]["every"] == 8
    assert pix["n"] == pix["sampled"]["kept"] > 2000 and pix["auroc"] == pytest.approx(exact["auroc"], abs=0.03)
    again = MetricsAccumulator.from_state(small.state(), cfg)
    assert again.summary()["pixel"] == pix
    other = MetricsAccumulator(cfg, input_hw=(16, 32), max_samples=3000)
    for f, raw in frames[:5]:  # 2560 samples: not thinned
        other.add(f, raw, None)
    again.merge(other)
    merged = again.summary()["pixel"]["sampled"]
    assert merged["of"] == 45 * 512 and merged["kept"] <= 3000 and merged["every"] >= 8
    # kept chunks are copies, not views holding each whole frame's array in memory
    store = small._sets["pixel"]
    assert all(s.base is None and y.base is None for _, s, y in store.chunks)
    assert sum(s.size for _, s, _ in store.chunks) == store.kept
    with pytest.raises(ValueError, match="kind"):
        full.arrays("voxel")
    # single samples cannot be halved further: the store stops over the cap instead of looping
    from ood_perception.evaluation.segmentation import _Samples

    tiny = _Samples(1)
    for f, n in enumerate([1, 0, 1]):
        tiny.add(np.zeros(n, np.float32), np.zeros(n, bool), f)
    assert tiny.offered == 2 and tiny.kept <= 2
