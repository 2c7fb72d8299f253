"""Results-table rendering: mean ± sample std per row and the verdict follow the numbers."""

from __future__ import annotations

import numpy as np
import pytest

from ood_perception.experiments.seg_table import render_markdown

SETUP = {"command": "python -m ood_perception.experiments.seg_table", "date": "2026-01-01", "machine": "x86_64, CPU",
         "data": "w", "data_desc": "synth", "n_train": 10, "n_test": 4, "epochs": 2}


def _rows(fpr_none, fpr_fm):
    out = []
    for name, fprs in (("none", fpr_none), ("FM", fpr_fm)):
        for seed, f in enumerate(fprs):
            out.append({"row": name, "seed": seed, "miou": 0.5, "fpr95": f, "auroc": 1 - f / 2, "aupr": 0.3,
                        "epoch_time_s": 10.0 + seed, "point_auroc": None})
    return out


def test_table_mean_std_and_positive_verdict() -> None:
    md = render_markdown(_rows([0.6, 0.5, 0.55], [0.3, 0.35, 0.32]), SETUP)
    v = np.array([0.6, 0.5, 0.55]) * 100
    assert f"| none | 50.0 ± 0.0 | {v.mean():.1f} ± {v.std(ddof=1):.1f} |" in md
    assert "| 11.0 ± 1.0 | 3 |" in md  # epoch time mean ± std
    assert "**Yes, on this set-up**" in md
    assert "inside the required 20-80% band" in md


def test_table_negative_verdict_and_baseline_band() -> None:
    md = render_markdown(_rows([0.1, 0.12, 0.11], [0.2, 0.1, 0.15]), SETUP)
    assert "**Not clearly" in md  # FM worse on average, but not on every seed
    assert "OUTSIDE the required 20-80% band" in md
    md = render_markdown(_rows([0.6, 0.5, 0.55], [0.61, 0.56, 0.6]), SETUP)  # worse on every seed
    assert "**No, on this set-up**: FM's FPR95 is higher than none's for every seed (paired +4.0 points)" in md
    assert "weak evidence" in md


def test_table_flags_a_seed_outside_the_band_and_names_the_knob() -> None:
    md = render_markdown(_rows([0.44, 0.89, 0.97], [0.5, 0.6, 0.7]), SETUP)
    assert "the mean is inside the required 20-80% band" in md  # mean 76.7
    assert "seed(s) 1, 2 OUTSIDE it" in md
    assert "made easier" in md and "mimic_prob" in md
    md = render_markdown(_rows([0.1, 0.12, 0.11], [0.2, 0.1, 0.15]), SETUP)
    assert "made harder" in md


def test_table_difference_and_world_test_comparison() -> None:
    rows = _rows([0.6, 0.5, 0.55], [0.3, 0.35, 0.32])
    for x in rows:
        x["world_test"] = {"miou": 0.4, "fpr95": 0.9 if x["row"] == "none" else 0.7, "auroc": 0.7, "aupr": 0.01,
                           "test_data": "w", "split": "test", "n_frames": 40, "n_ood": 123, "n_id": 4567}
    md = render_markdown(rows, SETUP)
    d = np.mean([0.3, 0.35, 0.32]) * 100 - np.mean([0.6, 0.5, 0.55]) * 100
    s = np.hypot(np.std([30, 35, 32], ddof=1), np.std([60, 50, 55], ddof=1))
    assert f"difference FM - none {d:+.1f} ± {s:.1f} points" in md
    pd = [-30.0, -15.0, -23.0]
    assert (f"Per seed, FM - none FPR95: -30.0, -15.0, -23.0 points; paired over seeds {np.mean(pd):+.1f} ± "
            f"{np.std(pd, ddof=1):.1f}") in md and "same sign for every seed" in md
    assert "## For comparison: the world's own test split" in md
    assert "| none | 40.0 ± 0.0 | 90.0 ± 0.0 | 70.0 ± 0.0 | 1.0 ± 0.0 | 90.0, 90.0, 90.0 |" in md
    assert "123 anomaly pixels vs 4567 ID pixels" in md


def test_table_explains_where_the_baseline_fails() -> None:
    rows = _rows([0.85, 0.8, 0.9], [0.7, 0.75, 0.8])
    for x in rows:
        if x["row"] == "none":
            x["hard_pixels"] = {"pred_hard": {"car": 0.9, "road": 0.1}, "pred_all": {"car": 0.5, "truck": 0.5},
                                "type_hard": {"overturned-car": 0.7, "box": 0.3}, "type_all": {"overturned-car": 1.0},
                                "id_above_threshold": x["fpr95"]}
    md = render_markdown(rows, SETUP)
    assert "## Where the baseline fails" in md
    assert "the model predicts there: car 90%, road 10% (over all anomaly pixels: car 50%, truck 50%)" in md
    assert "anomaly types: overturned-car 70%, box 30%" in md
    assert "than 85% of the ID pixels" in md


def test_hard_pixel_breakdown_counts_the_hardest_five_percent(tmp_path) -> None:
    """On a real (untrained) model and toy data: 5% of the anomaly pixels are 'hard', shares sum to 1,
    and the threshold is the one FPR95 is read at."""
    import torch
    import yaml

    from ood_perception.experiments import seg_table
    from ood_perception.models import build_model
    from ood_perception.trainer.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / "data", {"00": 2, "01": 3}, seed=3)
    split = next(k for k, v in yaml.safe_load((root / "dataset.yaml").read_text())["splits"].items() if v)
    torch.manual_seed(0)
    model = build_model({"num_classes": 3, "camera_backbone": "tiny", "lidar_width": 8, "camera_channels": 16,
                         "lidar_channels": 16, "head_channels": 16, "tiny_width": 8}).eval()
    (tmp_path / "run").mkdir()
    torch.save({"model_config": model.config.to_dict(), "state_dict": model.state_dict(),
                "class_names": ["car", "road", "building"], "colors": [[0, 0, 255], [128, 128, 128], [255, 0, 0]],
                "input_size": list(seg_table.TABLE_SIZE), "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
               tmp_path / "run" / "model.pt")
    got = seg_table.hard_pixel_breakdown(tmp_path / "run", root, split, tmp_path / "cache")
    assert got["n_ood"] > 100 and abs(got["n_hard"] - 0.05 * got["n_ood"]) <= 0.01 * got["n_ood"] + 1
    for key in ("type_all", "type_hard", "pred_all", "pred_hard"):
        assert abs(sum(got[key].values()) - 1.0) < 1e-9 and got[key]
    assert set(got["pred_all"]) <= {"car", "road", "building"}
    assert all(not k.isdigit() for k in got["type_all"])  # anomaly ids named from dataset.yaml
    # its threshold is the one FPR95 is read at: the ID share above it is evaluate_run's FPR95
    ev = seg_table.evaluate_run(tmp_path / "run", root, split, tmp_path / "cache", "camera")
    assert got["id_above_threshold"] == pytest.approx(ev["fpr95"], abs=0.02)


def test_table_end_to_end_parallel_equals_serial_and_guards_settings(tmp_path) -> None:
    """The one command on toy data: 2 runs trained side by side (``--jobs 2``, spawned processes)
    give the page and json; a second call reuses the finished runs and writes the same table; a call
    asking for other settings refuses the cached runs instead of mixing them in."""
    import json

    from ood_perception.experiments import seg_table
    from ood_perception.trainer.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / "data", {"00": 4, "01": 3}, seed=1)
    base = ["--data", str(root), "--test-data", str(root), "--runs", str(tmp_path / "runs"), "--seeds", "0"]
    args = [*base, "--epochs", "1", "--rows", "none", "FM"]
    assert seg_table.main([*args, "--jobs", "2", "--out", str(tmp_path / "par")]) == 0
    par = json.loads((tmp_path / "par" / "segmentation_small.json").read_text())
    assert [(r["row"], r["seed"]) for r in par["results"]] == [("none", 0), ("FM", 0)]
    assert "hard_pixels" in par["results"][0] and par["setup"]["jobs"] == 2
    for r in par["results"]:
        assert 0.0 <= r["fpr95"] <= 1.0 and r["steps"] >= 1
        done = json.loads((tmp_path / "runs" / r["row"] / "seed0" / "result.json").read_text())
        assert done["settings"] == seg_table.run_settings(r["row"], 1, root)
    md = (tmp_path / "par" / "segmentation_small.md").read_text()
    assert "| none |" in md and "| FM |" in md and "2 run(s) side by side" in md

    assert seg_table.main([*args, "--out", str(tmp_path / "ser")]) == 0  # cached runs, serial
    ser = json.loads((tmp_path / "ser" / "segmentation_small.json").read_text())
    for a, b in zip(par["results"], ser["results"], strict=True):
        assert {k: a[k] for k in ("row", "seed", "miou", "fpr95", "auroc", "aupr")} == \
               {k: b[k] for k in ("row", "seed", "miou", "fpr95", "auroc", "aupr")}

    with pytest.raises(SystemExit, match="other settings"):
        seg_table.main([*base, "--epochs", "2", "--rows", "none", "--out", str(tmp_path / "other")])
    assert not (tmp_path / "other" / "segmentation_small.md").exists()


def test_table_refuses_a_world_rendered_with_other_settings(tmp_path) -> None:
    """--world pointing at a dataset that is not the world the table would render is an error, not
    silently trained on (use --data for that)."""
    from ood_perception.experiments import seg_table
    from ood_perception.trainer.toy import make_toy_dataset

    root = make_toy_dataset(tmp_path / "data", {"00": 2, "01": 2}, seed=1)
    with pytest.raises(SystemExit, match="pass another --world"):
        seg_table.main(["--world", str(root), "--test-data", str(root), "--runs", str(tmp_path / "runs"),
                        "--out", str(tmp_path / "out")])
    assert not (tmp_path / "runs").exists()
