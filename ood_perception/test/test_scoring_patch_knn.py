"""maxlogit_knn: MaxLogit joined with a nearest-training-cell score on the frozen encoder's embedding.

Checked against an independent computation (scikit-learn PCA, brute-force distances, OpenCV
bilinear upsampling), through export (ONNX Runtime = torch) and through `evaluate --fit-data`.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import yaml
from sklearn.decomposition import PCA

from ood_perception import runtime
from ood_perception.models import build_model, load_checkpoint
from ood_perception.models.wrappers import ScoredSegmentation
from ood_perception.scoring import get_scorer
from ood_perception.trainer.export import export_segmentation_from_data
from ood_perception.trainer.toy import make_toy_dataset

torch.set_num_threads(1)
C = 24  # feature width of the synthetic cells


def _cells(n: int, seed: int, shift: float = 0.0, centres: int = 0) -> np.ndarray:
    """Cells near a 6-dim subspace, around four ID centres (``centres=0``) or four others (1)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(6, C))
    mid = np.random.default_rng(100 + centres).normal(size=(4, 6)) * 2
    x = (mid[rng.integers(0, 4, n)] + 0.3 * rng.normal(size=(n, 6))) @ basis + 0.05 * rng.normal(size=(n, C))
    return (x + shift * rng.normal(size=(n, C))).astype(np.float32)


def _fitted(dim: int = 6, bank: int = 100, k: int = 1) -> tuple[object, np.ndarray, np.ndarray]:
    f = _cells(600, 0)
    lg = np.random.default_rng(1).normal(size=(500, 5)).astype(np.float32) * 3
    sc = get_scorer("maxlogit_knn", dim=dim, bank_size=bank, k=k, seed=3)
    sc.fit(logits=torch.from_numpy(lg), features=torch.from_numpy(f))
    return sc, f, lg


def test_cell_scores_equal_pca_and_brute_force_nearest_neighbours() -> None:
    sc, f, lg = _fitted(k=3)
    fn = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-6)
    order = torch.randperm(len(f), generator=torch.Generator().manual_seed(3)).numpy()
    fn = fn[order]
    pca = PCA(6).fit(fn[:600])  # the whole sample (< 30000 cells): same centre and axes up to sign
    bank = pca.transform(fn[:100])
    q = _cells(50, 7, shift=0.5)
    qn = q / (np.linalg.norm(q, axis=1, keepdims=True) + 1e-6)
    d2 = ((pca.transform(qn)[:, None, :] - bank[None]) ** 2).sum(-1)
    want = np.sort(d2, axis=1)[:, 2]
    got = sc.cell_scores(torch.from_numpy(q)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    # the spread comes from the cells outside the bank, MaxLogit's from the fit logits
    rest = np.sort(((pca.transform(fn[100:])[:, None, :] - bank[None]) ** 2).sum(-1), axis=1)[:, 2]
    stats = sc.stats.numpy()
    # without expert-head logits the heads share the fused head's MaxLogit statistics
    np.testing.assert_allclose(sc.head_stats.numpy(), np.tile(stats[:2], (2, 1)), rtol=1e-6)
    assert stats[0] == pytest.approx(float(np.mean(-lg.max(1))), rel=1e-5)
    assert stats[1] == pytest.approx(float(np.std(-lg.max(1), ddof=1)), rel=1e-4)
    assert stats[2] == pytest.approx(float(rest.mean()), rel=1e-3)
    assert stats[3] == pytest.approx(float(rest.std(ddof=1)), rel=1e-3)


def test_expert_heads_get_their_own_maxlogit_statistics() -> None:
    f = _cells(600, 0)
    rng = np.random.default_rng(1)
    lg, cam, lid = (rng.normal(size=(500, 5)).astype(np.float32) * s for s in (3, 5, 1))
    sc = get_scorer("maxlogit_knn", dim=6, bank_size=100)
    sc.fit(logits=torch.from_numpy(lg), features=torch.from_numpy(f), camera_logits=torch.from_numpy(cam),
           lidar_logits=torch.from_numpy(lid))
    for row, x in zip(sc.head_stats.numpy(), (cam, lid), strict=True):
        assert row[0] == pytest.approx(float(np.mean(-x.max(1))), rel=1e-5)
        assert row[1] == pytest.approx(float(np.std(-x.max(1), ddof=1)), rel=1e-4)
    z = sc.logit_score(torch.from_numpy(lid), "lidar").numpy()
    assert abs(z.mean()) < 1e-4 and z.std(ddof=1) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="do not vary"):
        get_scorer("maxlogit_knn").fit(logits=torch.ones(50, 3), features=torch.from_numpy(f))
    with pytest.raises(ValueError, match="same N or B"):
        sc(torch.zeros(2, 5, 8, 8), torch.from_numpy(_cells(1, 3).reshape(1, C, 1, 1)))


def test_map_is_the_larger_z_score_with_the_cell_score_upsampled_bilinearly() -> None:
    sc, _, _ = _fitted()
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(1, 5, 16, 32)).astype(np.float32) * 3
    emb = _cells(8 * 16, 11, shift=0.3).T.reshape(1, C, 8, 16)
    got = sc(torch.from_numpy(logits), torch.from_numpy(emb))[0].numpy()
    m = sc.stats.numpy()
    cells = sc.cell_scores(torch.from_numpy(emb[0].reshape(C, -1).T)).numpy().reshape(8, 16)
    z_knn = cv2.resize(((cells - m[2]) / m[3]).astype(np.float32), (32, 16), interpolation=cv2.INTER_LINEAR)
    z_logit = (-logits[0].max(0) - m[0]) / m[1]
    np.testing.assert_allclose(got, np.maximum(z_logit, z_knn), rtol=1e-4, atol=1e-4)
    # per-sample inputs score row by row
    row = sc(torch.from_numpy(logits[0].reshape(5, -1).T[:128]), torch.from_numpy(emb[0].reshape(C, -1).T))
    assert row.shape == (128,)


def test_cells_unlike_training_score_higher() -> None:
    sc, _, _ = _fitted()
    near, far = _cells(200, 21), _cells(200, 22, centres=1)
    s_near, s_far = sc.cell_scores(torch.from_numpy(near)), sc.cell_scores(torch.from_numpy(far))
    assert float((s_far[:, None] > s_near[None]).float().mean()) > 0.95


def test_refusals_are_one_line() -> None:
    sc = get_scorer("maxlogit_knn")
    with pytest.raises(RuntimeError, match="needs fit"):
        sc(torch.zeros(1, 3, 8, 8), torch.zeros(1, C, 1, 1))
    with pytest.raises(ValueError, match="at least 20"):
        sc.fit(logits=torch.zeros(5, 3), features=torch.zeros(5, C))
    with pytest.raises(ValueError, match="bank_size"):
        get_scorer("maxlogit_knn", bank_size=1, k=2)
    fitted, _, _ = _fitted()
    with pytest.raises(ValueError, match=f"fitted on {C}-dim"):
        fitted(torch.zeros(1, 5, 8, 8), torch.zeros(1, C + 1, 1, 1))
    tiny = build_model({"num_classes": 3, "camera_backbone": "tiny", "lidar_width": 8, "camera_channels": 8,
                        "lidar_channels": 8, "head_channels": 8, "tiny_width": 8})
    with pytest.raises(ValueError, match="reads the model's embedding"):
        ScoredSegmentation(tiny, get_scorer("maxlogit_knn"))
    with pytest.raises(ValueError, match="give no unimodal scorer"):
        ScoredSegmentation(build_model(TAP), get_scorer("maxlogit_knn"), get_scorer("maxlogit"))


TAP = {"num_classes": 3, "camera_backbone": "mobilenet_v2", "camera_channels": 8, "lidar_channels": 8,
       "lidar_width": 4, "head_channels": 8, "design": "taps8"}


@pytest.fixture(scope="module")
def tap_setup(tmp_path_factory):
    """A taps8 network (random heads, random-initialised encoder: the code path, not the weights)
    and a toy world with train (00) and test (01) sequences at 64x128."""
    tmp = tmp_path_factory.mktemp("pk")
    root = make_toy_dataset(tmp / "data", {"00": 6, "01": 3}, size=(64, 128), seed=4)
    torch.manual_seed(0)
    model = build_model(TAP).eval()
    ckpt = tmp / "m.pt"
    torch.save({"model_config": model.config.to_dict(), "state_dict": model.state_dict(),
                "class_names": ["car", "road", "building"], "colors": [[0, 0, 255], [128, 128, 128], [255, 0, 0]],
                "input_size": [64, 128], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, ckpt)
    return root, ckpt, tmp


def test_export_fits_on_fit_data_and_onnx_equals_torch(tap_setup) -> None:
    root, ckpt, tmp = tap_setup
    spec = export_segmentation_from_data(ckpt, tmp / "model", calib_data=root, fit_data=root, score="maxlogit_knn")
    assert spec.score_name == "maxlogit_knn" and spec.score["unimodal"] == "maxlogit_knn"
    assert spec.calibration["fit_data"] == str(root) and spec.calibration["fit_split"] == "train"
    rng = np.random.default_rng(2)
    x = {"image": rng.normal(size=(1, 3, 64, 128)).astype(np.float32), "lidar": np.zeros((1, 6, 64, 128), np.float32)}
    a = runtime.load(tmp / "model", intra_op_threads=1).infer(x)
    b = runtime.load(tmp / "model", backend="torch").infer(x)
    for name in ("score_map", "camera_score_map", "lidar_score_map"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-3)
    assert np.ptp(a["score_map"]) > 0
    # each head in z units of its own training pixels: the LiDAR-only head by its z-scored MaxLogit
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        lid_logits = model(torch.from_numpy(x["image"]), torch.from_numpy(x["lidar"]))["lidar_logits"]
    sd = torch.load(tmp / "model" / "model.pt", weights_only=True)["state_dict"]
    lid = sd["scorer.head_stats"].numpy()[1]
    assert not np.allclose(lid, sd["scorer.stats"].numpy()[:2])  # fitted on the LiDAR head's own logits
    np.testing.assert_allclose(a["lidar_score_map"], (-lid_logits.numpy().max(1) - lid[0]) / lid[1], rtol=1e-4, atol=1e-3)


def test_evaluate_fits_like_export_and_skips_without_a_train_split(tap_setup, capsys) -> None:
    from ood_perception.trainer.evaluate import evaluate
    from ood_perception.trainer.seg_data import SegmentationData, collate

    root, ckpt, tmp = tap_setup
    if not (tmp / "model").is_dir():
        export_segmentation_from_data(ckpt, tmp / "model", calib_data=root, fit_data=root, score="maxlogit_knn")
    m = evaluate(ckpt, root, tmp / "ev", split="test", scorers=("maxlogit", "maxlogit_knn"), plots=False,
                 show_progress=False)
    assert m["fit"]["scorers"] == ["maxlogit_knn"] and m["fit"]["split"] == "train"
    # the exported graph (fitted by export on the same training frames) gives the same pixel AUROC
    data = SegmentationData(root, "test", (64, 128), None, show_progress=False)
    batch = collate([data[i] for i in range(len(data))], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    backend = runtime.load(tmp / "model", intra_op_threads=1)
    smap = backend.infer({"image": batch["image"].numpy(), "lidar": batch["lidar"].numpy()})["score_map"]
    tgt, ood = batch["target"].numpy(), batch["pixel_ood"].numpy()
    sel = (tgt != 255) | ood
    from sklearn.metrics import roc_auc_score

    assert m["ood"]["pixel"]["maxlogit_knn"]["auroc"] == pytest.approx(roc_auc_score(ood[sel], smap[sel]), abs=1e-3)
    # fit data without a train split: the fitted scorer is skipped with one line, the others evaluated
    notrain = make_toy_dataset(tmp / "notrain", {"00": 2}, size=(64, 128), seed=5)
    cfg = yaml.safe_load((notrain / "dataset.yaml").read_text())
    cfg["splits"] = {"test": ["00"]}
    (notrain / "dataset.yaml").write_text(yaml.safe_dump(cfg))
    m2 = evaluate(ckpt, root, tmp / "ev2", split="test", scorers=("maxlogit", "maxlogit_knn"), plots=False,
                  show_progress=False, fit_data=notrain)
    assert "maxlogit_knn skipped" in capsys.readouterr().err
    assert "maxlogit_knn" not in m2["ood"]["pixel"] and "maxlogit" in m2["ood"]["pixel"] and "fit" not in m2


def test_evaluate_refits_when_no_run_cache_is_given(tap_setup) -> None:
    """A caller that changes the model between evaluations (the distillation table retrains the
    classifier in place) must get a fit of the current weights; one evaluate() run shares its fits."""
    from ood_perception.trainer.evaluate import _fitted_scorer
    from ood_perception.trainer.seg_data import SegmentationData

    root, ckpt, tmp = tap_setup
    model, c = load_checkpoint(ckpt)
    data = SegmentationData(root, "train", (64, 128), None, show_progress=False)
    first = _fitted_scorer(model, "maxlogit_knn", data, c["mean"], c["std"], "cpu", None).stats.clone()
    with torch.no_grad():
        model.classifier.weight.mul_(3.0)
    memo: dict = {}
    second = _fitted_scorer(model, "maxlogit_knn", data, c["mean"], c["std"], "cpu", memo)
    assert not torch.allclose(first, second.stats)
    assert _fitted_scorer(model, "maxlogit_knn", data, c["mean"], c["std"], "cpu", memo) is second


def test_export_cli_refuses_what_it_would_ignore(tap_setup, capsys) -> None:
    from ood_perception.cli import main

    root, ckpt, tmp = tap_setup
    assert main(["export", str(ckpt), "--out", str(tmp / "x"), "--score", "maxlogit_knn", "--fit-data", str(root)]) != 0
    assert "--fit-data needs --calib-data" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--out", str(tmp / "x"), "--score", "maxlogit_knn", "--calib-data", str(root),
                 "--unimodal-score", "energy"]) != 0
    err = capsys.readouterr().err
    assert "--unimodal-score is not used with --score maxlogit_knn" in err and "Traceback" not in err
    assert not (tmp / "x").exists()


def test_export_refuses_fit_or_calibration_data_of_another_label_space(tap_setup, capsys) -> None:
    """Fit or calibration frames whose dataset.yaml names other classes: one line, nothing written
    (their train ids would select the wrong pixels as in-distribution)."""
    import shutil

    from ood_perception.cli import main

    root, ckpt, tmp = tap_setup
    other = tmp / "other_labels"
    if not other.exists():
        shutil.copytree(root, other)
        cfg = yaml.safe_load((other / "dataset.yaml").read_text())
        names = cfg["labels"] if isinstance(cfg.get("labels"), dict) else None
        assert names is not None, cfg.keys()
        first = next(k for k, v in names.items() if v == "car")
        names[first] = "motorcycle"
        (other / "dataset.yaml").write_text(yaml.safe_dump(cfg))
    for flags in (["--calib-data", str(other)], ["--calib-data", str(root), "--fit-data", str(other)]):
        out = tmp / "refused"
        assert main(["export", str(ckpt), "--out", str(out), "--score", "maxlogit_knn", *flags]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "differ from the checkpoint's" in err and str(other) in err, err
        assert not out.exists()


def test_export_says_when_fit_data_has_no_train_split(tap_setup, capsys) -> None:
    """Fit data without a train split (e.g. a test world): fitted on all its sequences, and said."""
    import shutil

    root, ckpt, tmp = tap_setup
    test_only = tmp / "test_only"
    if not test_only.exists():
        shutil.copytree(root, test_only)
        cfg = yaml.safe_load((test_only / "dataset.yaml").read_text())
        cfg["splits"] = {"test": ["00", "01"]}
        (test_only / "dataset.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    spec = export_segmentation_from_data(ckpt, tmp / "m_test_only", calib_data=root, fit_data=test_only, score="maxlogit_knn")
    err = capsys.readouterr().err
    assert spec.calibration["fit_split"] == "all"
    assert "export: warning:" in err and "no 'train' split" in err and len(err.strip().splitlines()) == 1
