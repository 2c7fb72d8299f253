"""Tests of the alert-level evaluation (ood_perception.evaluation.alerts / timeline).

A 10-frame sequence whose every number is worked out by hand in the comments.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ood_perception.evaluation import (
    ALERT,
    CLEAR,
    DEGRADED,
    SEMANTIC_KITTI_THING_IDS,
    WARNING,
    AlertEvalConfig,
    AlertEvaluator,
    candidate_object_scores,
    object_key,
    pixel_objects,
    point_objects,
    render_timeline_png,
    split_key,
)

OOD = (200, 201)
CAR = 10
K1 = object_key(200, 3)  # a trailer, instance 3
K2 = object_key(201, 5)
K3 = object_key(200, 7)  # never in view (10 px)
CFG = AlertEvalConfig(frame_min_pixels=50, object_min_pixels=50, acceptance_pixels=200, min_points=3)

#   k  stamp  level     score  anomaly objects (px)     frame label
SEQ_A = [
    (0, 0.0, CLEAR, 0.10, {}),                     # negative
    (1, 0.1, ALERT, 0.65, {}),                     # negative, ALERT -> false episode (frames 1-2)
    (2, 0.2, ALERT, 0.30, {}),                     # negative, ALERT
    (3, 0.3, CLEAR, 0.20, {K1: 30, K3: 10}),       # excluded (40 px < 50); nothing in view
    (4, 0.4, WARNING, 0.60, {K1: 120}),            # positive; K1 first in view
    (5, 0.5, ALERT, 0.90, {K1: 250}),              # positive; K1 alerted (1 frame, 0.1 s later)
    (6, 0.6, ALERT, 0.40, {}),                     # negative, ALERT (same run as frame 5: not false)
    (7, 0.7, ALERT, 0.35, {}),                     # negative, ALERT
    (8, 0.8, CLEAR, 0.70, {K2: 60}),               # positive; K2 in view, never alerted
    (9, 0.9, DEGRADED, None, {}),                  # negative, not scored
]


def evaluator_a() -> AlertEvaluator:
    ev = AlertEvaluator(OOD, (CAR,), CFG)
    for _, stamp, level, score, objs in SEQ_A:
        ev.add("a", stamp, level, score, anomaly_objects=objs)
    return ev


def test_keys_and_pixel_objects() -> None:
    assert split_key(object_key(200, 3)) == (200, 3)
    assert object_key(200, 3) == 200 | 3 << 16
    labels = np.zeros((4, 5), np.uint16)
    inst = np.zeros((4, 5), np.uint16)
    labels[0, :3] = 200
    inst[0, :3] = 3  # 3 px of instance 3
    labels[1, :2] = 200
    inst[1, :2] = 4  # 2 px of instance 4
    labels[3, :] = 201  # 5 px of 201, instance 0
    labels[2, :] = CAR  # known class: not an anomaly object
    assert pixel_objects(labels, inst, OOD) == {object_key(200, 3): 3, object_key(200, 4): 2, object_key(201, 0): 5}
    # without an instance map each anomaly semantic id is one object
    assert pixel_objects(labels, None, OOD) == {200: 5, 201: 5}


def test_point_objects_mean_score_and_min_points() -> None:
    k_an, k_car, k_car2 = object_key(200, 1), object_key(CAR, 2), object_key(CAR, 3)
    labels = np.array([k_an] * 4 + [k_car] * 3 + [k_car2] * 2 + [40] * 2, np.uint32)
    scores = np.array([0.8, 0.6, 0.7, np.nan, 0.2, 0.4, 0.3, 0.9, 0.9, 0.5, 0.5])
    # anomaly: 3 finite points, mean (0.8 + 0.6 + 0.7) / 3 = 0.7; car 2: mean 0.3; car 3: 2 points < 3;
    # road (40) is not an object class
    got = point_objects(labels, scores, (200, CAR), min_points=3)
    assert set(got) == {k_an, k_car}
    assert got[k_an][0] == 3 and got[k_an][1] == pytest.approx(0.7)
    assert got[k_car][0] == 3 and got[k_car][1] == pytest.approx(0.3)


def test_frame_level_by_hand() -> None:
    res = evaluator_a().result()
    fr = res["frame"]
    # positives (>= 50 px, scored): frames 4, 5, 8 with scores 0.6, 0.9, 0.7
    # negatives (0 px, scored): frames 0, 1, 2, 6, 7 with 0.1, 0.65, 0.3, 0.4, 0.35
    assert (fr["n_positive"], fr["n_negative"], fr["n_excluded_small"], fr["n_unscored"]) == (3, 5, 1, 1)
    s = fr["scores"]
    assert s["available"]
    # AUROC: of the 15 (positive, negative) pairs only (0.6, 0.65) is ordered wrongly -> 14/15
    assert s["auroc"] == pytest.approx(14 / 15)
    # 95% TPR needs all 3 positives: threshold 0.6 flags the negative 0.65 -> FPR 1/5
    assert s["fpr95"] == pytest.approx(0.2)
    # AUPR (trapezoid) down the ranking 0.9P 0.7P 0.65N 0.6P 0.4N ...: (recall, precision) =
    # (0,1) (1/3,1) (2/3,1) (2/3,2/3) (1,3/4) ... -> 1/3 + 1/3 + 1/3 * (2/3 + 3/4) / 2 = 65/72
    assert s["aupr_out"] == pytest.approx(65 / 72)
    # ALERT among positive frames (4 WARNING, 5 ALERT, 8 CLEAR): 1/3;
    # among anomaly-free frames (0, 1, 2, 6, 7, 9): 1, 2, 6, 7 -> 4/6
    assert fr["alert_rate_positive"] == pytest.approx(1 / 3)
    assert fr["alert_rate_negative"] == pytest.approx(4 / 6)


def test_false_alerts_by_hand() -> None:
    fa = evaluator_a().result()["false_alerts"]
    assert fa["anomaly_free_frames"] == 6
    assert fa["alert_frames_anomaly_free"] == 4
    assert fa["frame_share"] == pytest.approx(4 / 6)
    # ALERT runs: frames 1-2 (all anomaly-free: false) and 5-7 (frame 5 has K1: not false)
    assert (fa["alert_episodes"], fa["false_episodes"]) == (2, 1)
    assert fa["episodes"] == [{"sequence": "a", "start": 0.1, "stop": 0.2, "frames": 2}]
    # every frame lasts 0.1 s (the last one the median 0.1 s): 6 anomaly-free frames = 0.6 s = 0.01 min,
    # all 10 frames = 1 s -> 1 / 0.01 = 100 false episodes per anomaly-free minute, 60 per minute in all
    assert fa["anomaly_free_minutes"] == pytest.approx(0.01)
    assert fa["total_minutes"] == pytest.approx(1 / 60)
    assert fa["episodes_per_minute"] == pytest.approx(100.0)
    assert fa["episodes_per_minute_total"] == pytest.approx(60.0)


def test_objects_and_time_to_alert_by_hand() -> None:
    ob = evaluator_a().result()["objects"]
    assert ob["n_labelled"] == 3  # K1, K2, K3 (K3 never covers 50 px)
    by_key = {o["key"]: o for o in ob["list"]}
    k1 = by_key[K1]
    # K1: in view from frame 4 (120 px), first in-view ALERT at frame 5 -> 1 frame, 0.1 s; max 250 px
    assert (k1["semantic"], k1["instance"], k1["max_pixels"]) == (200, 3, 250)
    assert k1["alerted"] and k1["frames_to_alert"] == 1 and k1["seconds_to_alert"] == pytest.approx(0.1)
    assert k1["first_in_view"] == 0.4
    assert by_key[K2]["in_view"] and not by_key[K2]["alerted"] and by_key[K2]["frames_to_alert"] is None
    assert not by_key[K3]["in_view"] and by_key[K3]["max_pixels"] == 10
    iv = ob["in_view"]
    assert (iv["n"], iv["alerted"], iv["recall"]) == (2, 1, 0.5)
    assert iv["frames_to_alert"] == {"mean": 1.0, "median": 1.0, "max": 1.0}
    # acceptance subset (>= 200 px in some frame): K1 only, alerted -> recall 1 >= 0.9
    acc = ob["acceptance"]
    assert (acc["n"], acc["alerted"], acc["recall"], acc["met"]) == (1, 1, 1.0, True)


def test_alert_standing_when_object_appears_is_zero_time() -> None:
    ev = AlertEvaluator(OOD, (CAR,), CFG)
    ev.add("s", 0.0, ALERT, 1.0, anomaly_objects={})
    ev.add("s", 0.1, ALERT, 1.0, anomaly_objects={K1: 60})
    ob = ev.result()["objects"]["list"][0]
    assert ob["frames_to_alert"] == 0 and ob["seconds_to_alert"] == 0.0


def test_merge_order_state_and_gaps() -> None:
    # sequence b: two ALERT frames 5 s apart (gap > max_gap_s = 1 s) and anomaly-free: two false
    # episodes; durations capped at 1 s: frame 0 lasts 1 s, the last frame the median 1 s.
    b = AlertEvaluator(OOD, (CAR,), CFG)
    b.add("b", 5.0, ALERT, 0.2, anomaly_objects={})  # added out of order on purpose
    b.add("b", 0.0, ALERT, 0.1, anomaly_objects={})
    ab = evaluator_a()
    ab.merge(b)
    ba = AlertEvaluator(OOD, (CAR,), CFG)
    for _, stamp, level, score, objs in reversed(SEQ_A):
        ba.add("a", stamp, level, score, anomaly_objects=objs)
    b2 = AlertEvaluator.from_state(json.loads(json.dumps(b.state())))
    b2.merge(ba)
    r1, r2 = ab.result(), b2.result()
    assert json.dumps(r1, sort_keys=True) == json.dumps(r2, sort_keys=True)
    fa = r1["false_alerts"]
    assert (fa["false_episodes"], fa["anomaly_free_frames"]) == (3, 8)
    assert fa["frame_share"] == pytest.approx(6 / 8)
    assert fa["anomaly_free_minutes"] == pytest.approx((0.6 + 2.0) / 60)
    assert fa["episodes_per_minute"] == pytest.approx(3 / (2.6 / 60))
    assert r1["sequences"] == 2 and r1["frames"] == 12
    # select() takes one bag's share back out of the pooled evaluator
    assert json.dumps(ab.select("a").result(), sort_keys=True) == json.dumps(evaluator_a().result(), sort_keys=True)
    assert ab.select(["b"]).result()["false_alerts"]["false_episodes"] == 2
    assert ab.result()["frames"] == 12  # unchanged
    # the same object key in another sequence is another object
    c = AlertEvaluator(OOD, (CAR,), CFG)
    c.add("c", 0.0, ALERT, 0.5, anomaly_objects={K1: 300})
    ab.merge(c)
    assert ab.result()["objects"]["acceptance"]["n"] == 2
    with pytest.raises(ValueError, match="distinct sequence name"):
        ab.merge(evaluator_a())
    with pytest.raises(ValueError, match="different"):
        ab.merge(AlertEvaluator(OOD, (CAR,), AlertEvalConfig(frame_min_pixels=10)))


def test_object_score_separation_by_hand() -> None:
    ev = AlertEvaluator((200,), (CAR,), CFG)
    a1, a4, c2, c3 = object_key(200, 1), object_key(200, 4), object_key(CAR, 2), object_key(CAR, 3)
    # frame 1: anomaly a1 mean 0.7 (3 finite points), anomaly a4 mean 0.2, car c2 mean 0.3,
    # car c3 only 2 points (left out), road points ignored
    lab1 = np.array([a1] * 4 + [a4] * 3 + [c2] * 3 + [c3] * 2 + [40] * 5, np.uint32)
    sc1 = np.array([0.8, 0.6, 0.7, np.nan, 0.1, 0.2, 0.3, 0.2, 0.4, 0.3, 0.9, 0.9, 0, 0, 0, 0, 0])
    ev.add("s", 0.0, CLEAR, 0.1, anomaly_objects={}, point_labels=lab1, point_scores=sc1)
    # frame 2: a1's points say 0.9 but the caller's object score 0.25 wins; c2 mean 0.5
    lab2 = np.array([a1] * 3 + [c2] * 3, np.uint32)
    sc2 = np.array([0.9, 0.9, 0.9, 0.5, 0.5, 0.5])
    ev.add("s", 0.1, CLEAR, 0.1, anomaly_objects={}, point_labels=lab2, point_scores=sc2,
           object_scores={a1: 0.25, c3: 5.0})  # c3 has no eligible observation: ignored
    res = ev.result()["object_scores"]
    obs = res["observations"]
    # anomalies 0.7, 0.2, 0.25 vs known 0.3, 0.5: ordered pairs (0.7, 0.3), (0.7, 0.5) of 6 -> 1/3
    assert (obs["n_ood"], obs["n_id"]) == (3, 2)
    assert obs["auroc"] == pytest.approx(1 / 3)
    # tracks: a1 mean(0.7, 0.25) = 0.475, a4 0.2 vs c2 mean(0.3, 0.5) = 0.4 -> 1 of 2 pairs -> 0.5
    tr = res["tracks"]
    assert (tr["n_ood"], tr["n_id"]) == (2, 1)
    assert tr["auroc"] == pytest.approx(0.5)


def test_candidate_object_scores_by_hand() -> None:
    """The object decisions' score of a labelled object: the track score of the candidate holding most
    of its points (>= 5 of them), 0 when none does."""
    from types import SimpleNamespace

    a1, c2, c3 = object_key(200, 1), object_key(CAR, 2), object_key(CAR, 3)
    lab = np.array([a1] * 8 + [c2] * 6 + [c3] * 4 + [40] * 3, np.uint32)  # indices 0-7, 8-13, 14-17, 18-20
    big = SimpleNamespace(index=np.arange(0, 12), track_score=0.9)  # 8 of a1, 4 of c2
    other = SimpleNamespace(index=np.arange(8, 21), track_score=0.2)  # 6 of c2 (more than big's 4), 4 of c3, road
    got = candidate_object_scores([big, other], lab)
    # a1 -> big (8 >= 5); c2 -> other (6 > 4); c3: 4 points < 5 -> 0; road (key 40) held by other with 3 -> 0
    assert got == {a1: 0.9, c2: 0.2, c3: 0.0, 40: 0.0}
    assert candidate_object_scores([], lab) == {a1: 0.0, c2: 0.0, c3: 0.0, 40: 0.0}
    assert candidate_object_scores([big, other], lab, min_shared=7) == {a1: 0.9, c2: 0.0, c3: 0.0, 40: 0.0}


def test_unavailable_metrics_and_bad_input() -> None:
    ev = AlertEvaluator(OOD, (CAR,), CFG)
    ev.add("s", 0.0, CLEAR, 0.1, anomaly_objects={})
    res = ev.result()
    assert res["frame"]["scores"] == {"available": False, "n": 1, "n_positive": 0, "reason": "no positive frames"}
    assert res["objects"]["acceptance"]["recall"] is None and res["objects"]["acceptance"]["met"] is None
    assert res["false_alerts"]["episodes_per_minute"] is None  # one frame: no duration
    json.dumps(res, allow_nan=False)
    with pytest.raises(ValueError, match="already added"):
        ev.add("s", 0.0, CLEAR, 0.1, anomaly_objects={})
    with pytest.raises(ValueError, match="exactly one"):
        ev.add("s", 1.0, CLEAR, 0.1)
    with pytest.raises(ValueError, match="alert level"):
        ev.add("s", 1.0, 7, 0.1, anomaly_objects={})
    with pytest.raises(ValueError, match="not in ood_ids"):
        ev.add("s", 1.0, CLEAR, 0.1, anomaly_objects={object_key(CAR, 1): 5})
    with pytest.raises(ValueError, match="go together"):
        ev.add("s", 1.0, CLEAR, 0.1, anomaly_objects={}, point_labels=np.zeros(3, np.uint32))
    with pytest.raises(ValueError, match="both anomalies"):
        AlertEvaluator(OOD, (200, CAR))
    with pytest.raises(ValueError, match=">= 1"):
        AlertEvalConfig(min_points=0)


def test_pixel_labels_path_matches_anomaly_objects() -> None:
    labels = np.zeros((20, 20), np.uint16)
    inst = np.zeros((20, 20), np.uint16)
    labels[:10, :6] = 200
    inst[:10, :6] = 3  # 60 px of K1
    ev = AlertEvaluator(OOD, (CAR,), CFG)
    rec = ev.add("s", 0.0, ALERT, 0.9, pixel_labels=labels, pixel_instances=inst)
    assert rec.objects == {K1: 60} and rec.anomaly_pixels == 60
    (entry,) = ev.timeline()
    assert entry.frame_label == "positive" and entry.objects_in_view == (K1,) and entry.anomaly_in_view


def test_timeline_and_png() -> None:
    ev = evaluator_a()
    tl = ev.timeline("a")
    assert [e.frame_label for e in tl] == ["negative"] * 3 + ["excluded"] + ["positive"] * 2 + ["negative"] * 2 + [
        "positive", "negative"]
    assert [e.anomaly_in_view for e in tl] == [False] * 4 + [True, True, False, False, True, False]
    assert tl[9].level_name == "DEGRADED" and tl[9].score is None
    json.dumps([e.to_dict() for e in tl], allow_nan=False)
    png = render_timeline_png(tl, threshold=0.5)
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[1] == 900  # 10 in at 90 dpi
    with pytest.raises(ValueError, match="one sequence"):
        render_timeline_png(tl + [tl[0].__class__("z", 0.0, CLEAR, 0.1, 0, "negative")])
    with pytest.raises(ValueError, match="no timeline"):
        render_timeline_png([])


def test_world_pixel_and_point_objects_share_keys() -> None:
    """On a rendered synthetic frame, every anomaly object covering >= 200 camera pixels has LiDAR
    points in view with the same key (pixel_instances and the points' instance bits agree), so the
    pixel-based in-view test and the point-based object scores talk about the same objects."""
    from ood_perception.geometry import project_points
    from ood_perception.world.config import WorldConfig
    from ood_perception.world.labels import world_dataset_config
    from ood_perception.world.render import SequenceRenderer
    from ood_perception.world.scenario import plan_dataset

    dc = world_dataset_config()
    plan = plan_dataset(WorldConfig(), sequences=1, frames=40, seed=3, split="test")
    seq = plan.sequences[0]
    frame = SequenceRenderer(seq, plan.config).render(seq.episodes[0].start + 2)
    objs = pixel_objects(frame.pixel_labels, frame.pixel_instances, dc.ood_ids)
    big = {k for k, v in objs.items() if v >= 200}
    assert big and all(split_key(k)[1] > 0 for k in big)
    vis = project_points(frame.points, frame.calib).visible
    lab = frame.point_labels[vis]
    assert big <= {int(k) for k in np.unique(lab[dc.ood_mask(lab)])}
    ev = AlertEvaluator(dc.ood_ids, SEMANTIC_KITTI_THING_IDS)
    scores = np.where(dc.ood_mask(lab), 0.9, 0.1)
    rec = ev.add(seq.name, frame.stamp, ALERT, 1.0, pixel_labels=frame.pixel_labels,
                 pixel_instances=frame.pixel_instances, point_labels=lab, point_scores=scores)
    assert rec.anomaly_pixels == int(dc.ood_mask(frame.pixel_labels).sum())
    res = ev.result()
    assert res["objects"]["acceptance"]["n"] == len(big) and res["objects"]["acceptance"]["met"]
    assert all(o["frames_to_alert"] == 0 for o in res["objects"]["list"] if o["in_view"])


def test_excluded_types_are_neither_anomalies_nor_anomaly_free() -> None:
    """A model's outlier_types (seen in training) are left out: a frame showing only them is not an
    anomaly-free frame (an ALERT on it is no false alert) and not a positive; their objects and
    points are not scored; the state keeps the excluded ids and merging other ids is refused."""
    seen = 205  # debris, say, seen in training
    ev = AlertEvaluator(OOD, (CAR,), CFG, excluded_ids=(seen,))
    img = np.zeros((20, 20), np.uint16)
    only_seen = img.copy()
    only_seen[:10, :10] = seen  # 100 px of the excluded type
    both = only_seen.copy()
    both[15:, :] = 200  # 100 px of an evaluated type
    ev.add("s", 0.0, CLEAR, 0.1, pixel_labels=img, pixel_instances=None)
    ev.add("s", 0.1, ALERT, 0.8, pixel_labels=only_seen, pixel_instances=None)
    ev.add("s", 0.2, ALERT, 0.9, pixel_labels=both, pixel_instances=None)
    ev.add("s", 0.3, CLEAR, 0.2, pixel_labels=img, pixel_instances=None,
           point_labels=np.array([seen] * 5 + [CAR] * 5, np.uint32), point_scores=np.ones(10))
    res = ev.result()
    fr = res["frame"]
    assert (fr["n_positive"], fr["n_negative"], fr["n_excluded_small"], fr["n_excluded_type"]) == (1, 2, 0, 1)
    fa = res["false_alerts"]
    assert (fa["anomaly_free_frames"], fa["alert_frames_anomaly_free"], fa["false_episodes"]) == (2, 0, 0)
    assert [e.frame_label for e in ev.timeline()] == ["negative", "excluded", "positive", "negative"]
    assert set(ev.records[3].observations) == {object_key(CAR, 0)}  # the excluded type's points are not observed
    assert res["config"]["excluded_ids"] == [seen]
    back = AlertEvaluator.from_state(json.loads(json.dumps(ev.state())))
    assert back.result() == res
    with pytest.raises(ValueError, match="excluded_ids"):
        ev.merge(AlertEvaluator(OOD, (CAR,), CFG))
    with pytest.raises(ValueError, match="excluded"):
        AlertEvaluator(OOD, (CAR,), CFG, excluded_ids=(200,))


def test_dataset_config_excluding_types() -> None:
    from ood_perception.world.labels import world_dataset_config

    cfg = world_dataset_config()
    names = {cfg.labels[i]: i for i in cfg.ood_ids}
    out = cfg.excluding(["trailer", "animal", "not-a-type"])
    assert out.excluded_ids == sorted([names["trailer"], names["animal"]]) and cfg.excluded_ids == []
    assert names["trailer"] not in out.ood_ids and names["box"] in out.ood_ids
    raw = np.array([names["trailer"], names["box"], 10])
    assert out.ood_mask(raw).tolist() == [False, True, False]
    assert out.to_train_ids(raw)[0] == 255  # ignored, not an ID class
    assert cfg.excluding([]) is cfg and cfg.excluding(None) is cfg
