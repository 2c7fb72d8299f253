"""Replay's alert-level evaluation (issue 17): metrics.json ``alerts`` / ``components`` and the report's
timelines, checked against the definitions recomputed here from the test drives' labels and the
levels replay recorded; pooled metrics of two bags = the merge of the per-bag evaluators.

The drives (:mod:`replay_bags`) are exact: the "model" flags the red square and nothing else, so the
published mask is the square; anomaly frames label it 150, decoy frames label it car (10, a known
thing class), so decoys are false alerts and known-class object observations.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from replay_bags import ANOMALY, ROAD, H, W, frame_arrays, write_drive_bag
from test_replay_engine import pipeline, settings

from ood_perception.evaluation import AlertEvaluator
from ood_perception.metrics import ood_metrics
from ood_perception.replay.alert_metrics import (
    OBJECT_SCORES_FROM_CANDIDATES,
    OBJECT_SCORES_FROM_POINTS,
    OBJECTS_FROM_CLASSES,
    AlertMetrics,
    pool,
)
from ood_perception.replay.report import _clean

CAR = 10
DRIVES = {  # name: (frames, anomaly frames, decoy frames)
    "bagA": (10, (2, 3, 4), (7, 8)),
    "bagB": (6, (1, 2), ()),
}


def car_config():
    from ood_perception.data import DatasetConfig

    return DatasetConfig.from_dict({
        "labels": {0: "unlabeled", CAR: "car", 40: "road", 150: "anomaly"},
        "color_map": {0: [0, 0, 0], CAR: [245, 150, 100], 40: [255, 0, 255], 150: [0, 0, 255]},
        "learning_map": {0: 0, CAR: 1, 40: 2, 150: 0}, "learning_map_inv": {0: 0, 1: CAR, 2: 40}, "ood_ids": [150],
    })


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """Both drives replayed as one run (per-bag folders + pooled outputs)."""
    from ood_perception.replay import run as run_mod

    tmp = tmp_path_factory.mktemp("alerts")
    cfg = tmp / "dataset.yaml"
    car_config().write_yaml(cfg)
    bags = [write_drive_bag(tmp / name, frames=n, anomaly_frames=a, decoy_frames=d, decoy_label=CAR)
            for name, (n, a, d) in DRIVES.items()]
    mp = pytest.MonkeyPatch()
    mp.setattr(run_mod, "build_pipeline", lambda *a, **k: pipeline())
    try:
        results = run_mod.run_replay(bags, tmp / "out", settings(), dataset_config=cfg, progress=False)
    finally:
        mp.undo()
    per_bag = {name: json.loads((tmp / "out" / name / "metrics.json").read_text()) for name in DRIVES}
    pooled = json.loads((tmp / "out" / "metrics.json").read_text())
    return tmp, results, per_bag, pooled


def expected_from_labels(name: str, levels: list[int]) -> dict:
    """The alert definitions recomputed from the drive's labels and the recorded levels."""
    n, anomaly, decoy = DRIVES[name]
    pixels = [int((frame_arrays(i, i in anomaly or i in decoy, CAR if i in decoy else ANOMALY)[1] == ANOMALY).sum())
              for i in range(n)]
    free = [p == 0 for p in pixels]
    alert = [lv == 2 for lv in levels]
    runs, cur = [], []
    for i in range(n):
        if alert[i]:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    in_view = [i for i in range(n) if pixels[i] >= 50]
    first_alert = next((i for i in in_view if alert[i]), None)
    return {
        "positive": sum(p >= 50 for p in pixels), "negative": sum(free),
        "frame_share": sum(a and f for a, f in zip(alert, free, strict=True)) / sum(free),
        "alert_episodes": len(runs), "false_episodes": sum(all(free[i] for i in r) for r in runs),
        "frames_to_alert": None if first_alert is None else first_alert - in_view[0],
        "positive_flags": [p >= 50 for p in pixels],
    }


@pytest.mark.parametrize("name", list(DRIVES))
def test_alert_metrics_follow_the_definitions(replayed, name):
    _, _, per_bag, _ = replayed
    data = per_bag[name]
    n, anomaly, decoy = DRIVES[name]
    levels = [["CLEAR", "WARNING", "ALERT", "DEGRADED"].index(f["level"]) for f in data["bags"][0]["per_frame"]]
    exp = expected_from_labels(name, levels)
    a = data["alerts"]
    assert a["available"] and a["frames"] == n and a["levels"]["ALERT"] == levels.count(2)
    assert (a["frame"]["n_positive"], a["frame"]["n_negative"]) == (exp["positive"], exp["negative"]) == (len(anomaly), n - len(anomaly))
    # frame score = the 99th percentile of the exact score map; its AUROC from those scores and the labels
    scores = []
    for i in range(n):
        rgb = frame_arrays(i, i in anomaly or i in decoy)[0].astype(np.float32) / 255
        scores.append(float(np.percentile(rgb[..., 0] - rgb[..., 1], 99)))
    got_scores = [f["frame_score"] for f in data["bags"][0]["per_frame"]]
    np.testing.assert_allclose(got_scores, scores, atol=1e-5)
    ref = ood_metrics(np.array(got_scores), np.array(exp["positive_flags"]))
    for k in ("auroc", "fpr95", "aupr_out"):
        assert a["frame"]["scores"][k] == pytest.approx(ref[k]), k
    fa = a["false_alerts"]
    assert fa["frame_share"] == pytest.approx(exp["frame_share"])
    assert (fa["alert_episodes"], fa["false_episodes"]) == (exp["alert_episodes"], exp["false_episodes"])
    # a decoy that raises ALERT is a false episode: minutes = anomaly-free frames x 0.1 s (10 Hz drive)
    assert fa["anomaly_free_minutes"] == pytest.approx(exp["negative"] * 0.1 / 60)
    assert fa["episodes_per_minute"] == pytest.approx(exp["false_episodes"] / (exp["negative"] * 0.1 / 60))
    if name == "bagA":
        assert exp["false_episodes"] >= 1  # the decoys did raise a false alert (the test means something)
    # one anomaly object (no pixel instances in the bag: one object per class), alerted after the k-of-n rule
    ob = a["objects"]
    assert a["objects_from"] == OBJECTS_FROM_CLASSES and a["frames_with_pixel_instances"] == 0
    assert [(o["key"], o["sequence"], o["max_pixels"]) for o in ob["list"]] == [(ANOMALY, name, 144)]
    assert ob["in_view"]["n"] == 1 and ob["in_view"]["frames_to_alert"]["max"] == exp["frames_to_alert"]
    assert ob["in_view"]["seconds_to_alert"]["max"] == pytest.approx(0.1 * exp["frames_to_alert"])
    assert ob["acceptance"]["n"] == 0  # 144 px < 200 px
    # object scores: 36 LiDAR points on every square (>= 10): anomaly frames positive, decoy (car) frames negative
    obs = a["object_scores"]["observations"]
    if decoy:
        assert obs["available"] and (obs["n_ood"], obs["n_id"]) == (len(anomaly), len(decoy))
        assert obs["auroc"] == pytest.approx(0.5)  # both squares are equally red: every score ties
    else:
        assert not obs["available"] and obs["n"] == len(anomaly) and obs["reason"] == "no negative object observations"
    # components: the mask is the square; anomaly squares are true positives, decoy squares false positives
    c = data["components"]
    assert c["available"] and c["frames"] == n and (c["min_pred_pixels"], c["min_gt_pixels"]) == (0, 0)
    tp, fp = len(anomaly), len(decoy)
    assert all((r["tp"], r["fn"], r["fp"]) == (tp, 0, fp) for r in c["per_tau"])
    assert c["f1_mean"] == pytest.approx(2 * tp / (2 * tp + fp))


def test_pooled_alert_metrics_are_the_merge_of_the_bags(replayed):
    tmp, results, per_bag, pooled = replayed
    ref = AlertEvaluator.from_state(results[0].alert_metrics.alerts.state())
    ref.merge(AlertEvaluator.from_state(results[1].alert_metrics.alerts.state()))
    extra = ("levels", "available", "objects_from", "frames_with_pixel_instances", "frames_points_not_aligned",
             "object_scores_from")
    got = {k: v for k, v in pooled["alerts"].items() if k not in extra}
    assert pooled["alerts"]["frames_points_not_aligned"] == 0
    assert pooled["alerts"]["object_scores_from"] == OBJECT_SCORES_FROM_POINTS  # these bags are decided on pixels
    assert got == json.loads(json.dumps(_clean(ref.result())))
    assert pooled["alerts"]["frame"]["n_positive"] == sum(d["alerts"]["frame"]["n_positive"] for d in per_bag.values())
    assert pooled["alerts"]["objects"]["in_view"]["n"] == 2 and pooled["alerts"]["sequences"] == 2
    for k, r in enumerate(pooled["components"]["per_tau"]):
        for key in ("tp", "fn", "fp"):
            assert r[key] == sum(d["components"]["per_tau"][k][key] for d in per_bag.values())
    assert pooled["alerts"]["levels"] == {
        lv: sum(d["alerts"]["levels"][lv] for d in per_bag.values()) for lv in pooled["alerts"]["levels"]}
    # the report: the summary table and one alert timeline per bag
    html = (tmp / "out" / "report.html").read_text()
    assert "Alert-level evaluation" in html and "component mean F1" in html
    for name in DRIVES:
        assert f'alt="alert timeline {name}" src="data:image/png;base64,' in html
        assert f'alt="alert timeline {name}"' in (tmp / "out" / name / "report.html").read_text()


def test_pool_renames_bags_of_the_same_name_and_keeps_inputs(replayed):
    _, results, _, _ = replayed
    m = results[1].alert_metrics
    before = json.dumps(_clean(m.result()), sort_keys=True)
    both = pool([m, m])
    assert both.alerts.sequences() == ["000_bagB", "001_bagB"]
    assert both.result()["alerts"]["frames"] == 2 * m.result()["alerts"]["frames"]
    assert json.dumps(_clean(m.result()), sort_keys=True) == before  # inputs unchanged
    assert pool([None]) is None


def test_frames_without_pixel_labels_give_no_alert_metrics(tmp_path):
    from ood_perception.replay.engine import replay_bag

    bag = write_drive_bag(tmp_path / "a", frames=3, labels=False)
    res = replay_bag(bag, pipeline(), settings(), None, car_config())
    r = res.alert_metrics.result()
    assert r["alerts"] == {"available": False, "reason": "no frame with pixel labels"}
    assert not r["components"]["available"]


def test_unscored_frames_stay_in_the_alert_evaluation():
    """A DEGRADED frame without a mask: counted as unscored in ``frame``, left out of the components."""
    from types import SimpleNamespace

    am = AlertMetrics(car_config(), "s")
    lab = np.full((H, W), ROAD, np.uint16)
    lab[:10, :10] = ANOMALY
    mask = np.zeros((H, W), np.uint8)
    mask[:10, :10] = 255
    ok = SimpleNamespace(level=2, frame_score=0.9, mask=mask, point_scores=np.zeros(0, np.float32))
    bad = SimpleNamespace(level=3, frame_score=float("nan"), mask=None, point_scores=np.zeros(0, np.float32))
    am.add(ok, 1_000_000_000, (H, W), lab)
    am.add(bad, 1_100_000_000, (H, W), lab[::2, ::2])  # labels at half resolution: resized (nearest)
    r = am.result()
    assert r["alerts"]["frame"]["n_positive"] == 1 and r["alerts"]["frame"]["n_unscored"] == 1
    assert r["alerts"]["frames"] == 2
    assert r["components"]["frames"] == 1 and r["components"]["skipped"] == {"components_unscored_frames": 1}


def test_object_scores_are_the_object_decisions_score_on_frames_decided_on_objects():
    """With object decisions (``FusionResult.by_objects``) each labelled object is scored by the track score of
    the candidate holding most of its points (0 when none does), not by its mean point score; the
    source is said, survives state round trips and merges, and a frame decided on pixels says so."""
    from types import SimpleNamespace

    from ood_perception.evaluation import object_key

    anomaly, car = object_key(ANOMALY, 1), object_key(CAR, 2)
    labels = np.array([anomaly] * 12 + [car] * 12, np.uint32)
    points = np.concatenate([np.full(12, 0.1), np.full(12, 3.0)]).astype(np.float32)  # the car's points score higher
    lab = np.full((H, W), ROAD, np.uint16)
    lab[:10, :10] = ANOMALY

    def frame(by_objects, objects):
        return SimpleNamespace(level=0, frame_score=0.5, mask=None, point_scores=points, by_objects=by_objects,
                               objects=objects)

    judged = [SimpleNamespace(index=np.arange(12), track_score=0.8),  # the anomaly, judged anomalous
              SimpleNamespace(index=np.arange(12, 24), track_score=0.1)]  # the car, judged known
    am = AlertMetrics(car_config(), "s")
    for i in range(3):
        am.add(frame(True, judged), 1_000_000_000 + i * 100_000_000, (H, W), lab, point_labels=labels)
    a = am.result()["alerts"]
    assert a["object_scores_from"] == OBJECT_SCORES_FROM_CANDIDATES
    assert a["object_scores"]["observations"]["auroc"] == pytest.approx(1.0)  # by the mean point score: 0.0
    back = AlertMetrics.from_state(json.loads(json.dumps(am.state())), car_config())
    assert back.result() == am.result()
    # no candidate holds the anomaly: it scores 0, below the judged car
    pix = AlertMetrics(car_config(), "t")
    pix.add(frame(True, judged[1:]), 1_000_000_000, (H, W), lab, point_labels=labels)
    assert pix.result()["alerts"]["object_scores"]["observations"]["auroc"] == pytest.approx(0.0)
    # a frame decided on pixels: the mean point score, and the pooled source says mixed
    pix.add(frame(False, []), 1_100_000_000, (H, W), lab, point_labels=labels)
    assert pix.object_scores_by == {"candidates": 1, "points": 1}
    am.merge(pix)
    assert am.result()["alerts"]["object_scores_from"].startswith("mixed")
    only_pixels = AlertMetrics(car_config(), "u")
    only_pixels.add(frame(False, []), 1_000_000_000, (H, W), lab, point_labels=labels)
    assert only_pixels.result()["alerts"]["object_scores_from"] == OBJECT_SCORES_FROM_POINTS


def test_replay_leaves_out_the_anomaly_types_the_model_saw_in_training(tmp_path):
    """model.json outlier_types (issue 17): replay evaluates only the other anomaly types."""
    import json
    import shutil

    from ood_perception import runtime
    from ood_perception.cli import main
    from ood_perception.world.config import WorldConfig
    from ood_perception.world.synth import generate_dataset

    cfg = WorldConfig()
    cfg.anomalies.rate = 1.0
    generate_dataset(tmp_path / "w", sequences=1, frames=4, seed=8250, config=cfg, split="test", bag="mcap",
                     progress=False)
    spec = json.loads((runtime.default_model_dir() / "model.json").read_text())
    assert spec["outlier_types"] == ["barrel", "box", "debris", "odd-shape", "stroller"]  # the default model's exposure
    models = {}
    seen = ["trailer", "overturned-car", "stroller", "shopping-cart", "animal", "debris", "box", "tire", "barrel"]
    for name, types in (("none", []), ("nine", seen)):  # no type seen / all types but odd-shape
        models[name] = tmp_path / f"model_{name}"
        shutil.copytree(runtime.default_model_dir(), models[name])
        (models[name] / "model.json").write_text(json.dumps(dict(spec, outlier_types=types)))
    model = models["nine"]
    bag = tmp_path / "w" / "bags" / "00"
    assert main(["replay", str(bag), "--out", str(tmp_path / "all"), "--model", str(models["none"]), "--no-progress"]) == 0
    assert main(["replay", str(bag), "--out", str(tmp_path / "unseen"), "--model", str(model), "--no-progress"]) == 0
    full = json.loads((tmp_path / "all" / "metrics.json").read_text())
    part = json.loads((tmp_path / "unseen" / "metrics.json").read_text())
    assert full["alerts"]["config"]["excluded_ids"] == []
    assert len(part["alerts"]["config"]["excluded_ids"]) == 9 and part["alerts"]["config"]["ood_ids"] == [209]
    assert "without the model's outlier_types" in part["info"]["label_map"]
    # every frame shows anomalies: all are positives or excluded, none is anomaly-free in either run
    fr_full, fr_part = full["alerts"]["frame"], part["alerts"]["frame"]
    assert fr_full["n_negative"] == fr_part["n_negative"] == 0
    assert fr_part["n_positive"] <= fr_full["n_positive"]
    assert fr_part["n_positive"] + fr_part["n_excluded_small"] + fr_part["n_excluded_type"] + fr_part["n_unscored"] == 4
