"""Can a region score fitted on validation objects separate never-seen anomaly objects from known ones?

An experiment, not a speed benchmark (docs/model.md, "Follow-up: region-score weights fitted on
validation objects"). Every object candidate the fusion pipeline finds (``--params``, object
decisions) on the given drives is labelled by the ground-truth object holding most of its points
(anomaly / known-class / other) and described by its evidence (``unknown``, ``conflict``, ``ood``,
``drivable``), statistics of its point scores and its shape. Scikit-learn models are fitted on the
``--fit`` drives and scored on the ``--test`` drives; the table gives the candidate-level AUROC of
anomaly vs known-class candidates for single terms and fitted models.

Type-disjoint protocol: the fit drives should show other anomaly types than the test drives (e.g.
the types the model saw in training: ``synth --config ood_perception/config/world_oe_expose.yaml``),
or the fit learns the test types. Anomaly types are counted as anomalies on every drive here (the
model's ``outlier_types`` are *not* left out: the fit drives show exactly those).

Usage (the figures of docs/model.md)::

    python bench/region_fit.py --model build/oe/model \\
        --fit build/oe/drives/valx_812{1..6} build/oe/drives/val_810{1..6} \\
        --test build/oe/drives/testb_821{1,2,3} build/drives/test_820{1,2,3} --out build/region_fit.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, markdown_table, write_results
from alert_eval import fusion_config
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ood_perception import runtime
from ood_perception.data import DatasetConfig
from ood_perception.evaluation.alerts import known_thing_ids
from ood_perception.pipeline import FusionPipeline
from ood_perception.replay.dataset import replay_dataset

ROOT = Path(__file__).resolve().parent.parent
SCORE_TERMS = ["unknown", "conflict", "ood", "drivable", "mean", "max", "q10", "q50", "q90"]
SHAPE_TERMS = ["log_points", "sz", "top", "sx", "sy"]
FEATURE_SETS = {"evidence + score": SCORE_TERMS, "evidence + score + log points": [*SCORE_TERMS, "log_points"],
                "evidence + score + shape": SCORE_TERMS + SHAPE_TERMS}


def candidates(model: Any, params: str, drives: list[Path]) -> list[dict[str, Any]]:
    """One row per object candidate of every frame of ``drives``: label class and features."""
    cfg = fusion_config(params, "objects", {})
    rows = []
    for drive in drives:
        ds = DatasetConfig.from_yaml(drive / "dataset.yaml")
        ood, known = set(ds.ood_ids), set(known_thing_ids(ds))
        pipe = FusionPipeline(model, cfg)
        for fi, (frame, res) in enumerate(replay_dataset(pipe, drive)):
            plab = frame.point_labels[res.in_view]
            for ob in res.objects:
                keys, cnt = np.unique(plab[ob.index] & 0xFFFFFFFF, return_counts=True)
                sem = int(keys[np.argmax(cnt)]) & 0xFFFF
                s = res.point_scores[ob.index]
                s = s[np.isfinite(s)]
                q = np.quantile(s, [0.1, 0.5, 0.9]) if s.size else np.full(3, np.nan)
                rows.append({"drive": drive.name, "frame": fi, "cls": "anomaly" if sem in ood else "known" if sem in known else "other",
                             "unknown": ob.unknown, "conflict": ob.conflict, "ood": ob.ood, "drivable": ob.drivable,
                             "mean": ob.mean_score, "max": ob.max_score, "q10": q[0], "q50": q[1], "q90": q[2],
                             "log_points": float(np.log1p(ob.num_points)), "sx": ob.size[0], "sy": ob.size[1], "sz": ob.size[2],
                             "top": ob.top, "region_score": ob.score, "track_score": ob.track_score})
        print(f"{drive.name}: {len(rows)} candidates so far", flush=True)
    return rows


def _xy(rows: list[dict[str, Any]], feats: list[str], classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    sel = [r for r in rows if r["cls"] in classes]
    x = np.nan_to_num(np.array([[float(r[f]) for f in feats] for r in sel], np.float64))
    return x, np.array([r["cls"] == "anomaly" for r in sel])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="exported model directory (model.json) whose candidates are scored")
    ap.add_argument("--params", default=str(ROOT / "ood_perception" / "config" / "vehicle.yaml"),
                    help="fusion params file of the object decisions (default: config/vehicle.yaml)")
    ap.add_argument("--fit", nargs="+", required=True, type=Path,
                    help="drives (`synth` outputs with labels) the models are fitted on")
    ap.add_argument("--test", nargs="+", required=True, type=Path, help="held-out drives the test AUROC is measured on")
    ap.add_argument("--out", default=None, help="write the results as OUT.json and OUT.md (default: print only)")
    args = ap.parse_args()
    model = runtime.load(args.model, intra_op_threads=1)
    fit, test = candidates(model, args.params, args.fit), candidates(model, args.params, args.test)
    counts = {name: {c: sum(r["cls"] == c for r in rows) for c in ("anomaly", "known", "other")}
              for name, rows in (("fit", fit), ("test", test))}
    table: list[dict[str, Any]] = []
    x_te, y_te = _xy(test, SCORE_TERMS + SHAPE_TERMS + ["region_score", "track_score"], ("anomaly", "known"))
    for j, f in enumerate(SCORE_TERMS + SHAPE_TERMS + ["region_score", "track_score"]):
        table.append({"score": f"single term: {f}", "test_auroc": float(roc_auc_score(y_te, x_te[:, j]))})
    for set_name, feats in FEATURE_SETS.items():
        for negatives in (("known",), ("known", "other")):
            x_fit, y_fit = _xy(fit, feats, ("anomaly", *negatives))
            x_t, y_t = _xy(test, feats, ("anomaly", "known"))
            for model_name, clf in (
                    ("logistic regression", make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))),
                    ("gradient-boosted trees", HistGradientBoostingClassifier(max_depth=3, max_iter=200, class_weight="balanced",
                                                                              random_state=0))):
                clf.fit(x_fit, y_fit)
                table.append({"score": f"{model_name} on {set_name} (negatives: {' + '.join(negatives)})",
                              "fit_auroc": float(roc_auc_score(y_fit, clf.predict_proba(x_fit)[:, 1])),
                              "test_auroc": float(roc_auc_score(y_t, clf.predict_proba(x_t)[:, 1]))})
    print("test AUROC, anomaly vs known-class candidates:")
    for row in table:
        print(f"{row['test_auroc']:.3f}  {row['score']}")
    results = {"model": args.model, "params": args.params, "fit": [str(p) for p in args.fit], "test": [str(p) for p in args.test],
               "candidates": counts, "machine": machine_info(), "rows": table}
    if args.out:
        md = ("# Region score fitted on validation objects: candidate-level AUROC, anomaly vs known-class\n\n"
              f"Model {args.model}; candidates {json.dumps(counts)}. *fit AUROC* is measured on the fit drives "
              "themselves (training fit, not a held-out figure); *test AUROC* on the held-out drives.\n\n"
              + markdown_table(["score", "fit AUROC", "test AUROC"],
                               [[r["score"], f"{r['fit_auroc']:.3f}" if "fit_auroc" in r else "", f"{r['test_auroc']:.3f}"] for r in table]))
        write_results(Path(args.out).stem, results, md, Path(args.out).parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
