"""Results-table rendering: mean ± sample std per row and the verdict follow the numbers."""

from __future__ import annotations

import numpy as np

from ood_perception.trainer.seg_table import render_markdown

SETUP = {"command": "python -m ood_perception.trainer.seg_table", "date": "2026-01-01", "machine": "x86_64, CPU",
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
    assert "**Not clearly" in md
    assert "OUTSIDE the required 20-80% band" in md
