"""Issue 7 acceptance: replay of a synthetic bag with labels reproduces ``ood-perception evaluate``.

One tiny synthetic drive (``ood-perception synth --bag``: SemanticKITTI folder + rosbag2 of the same
frames), a small randomly initialised FusionSegNet saved as a checkpoint and exported to ONNX
(``ood-perception export``). ``evaluate`` scores the checkpoint with torch on the dataset; ``replay``
runs the exported graph through the fusion node's pipeline on the bag, with the folder's labels
and its ``calib.txt`` extrinsics (``--calib``). Both follow the shared convention (camera-resolution
pixels, the points the pipeline scores), so mIoU, AUROC, FPR95 and AUPR agree at pixel and point
level up to ONNX Runtime vs torch float differences, on identical pixel/point sets; the model
inputs replay builds from the bag are checked against evaluate's cached inputs directly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from ood_perception.cli import main

CAMERA = "96x48"  # camera (label) resolution; the model runs at 32x64, so maps are upsampled 1.5x
INPUT_SIZE = [32, 64]
FRAMES = 4


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    """Dataset + bag + checkpoint + exported model; the replay's model inputs recorded."""
    from ood_perception.data import DatasetConfig
    from ood_perception.models import build_model
    from ood_perception.world.config import WorldConfig

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("eq")
    world = WorldConfig().to_dict()
    world["lidar"].update(beams=32, azimuth_steps=512)  # small and quick; still thousands of points in view
    (tmp / "world.yaml").write_text(yaml.safe_dump(world))
    ds = tmp / "ds"
    assert main(["synth", "--out", str(ds), "--sequences", "1", "--frames", str(FRAMES), "--size", CAMERA,
                 "--split", "test", "--anomaly-rate", "1.0", "--bag", "sqlite3", "--config", str(tmp / "world.yaml"),
                 "--quiet"]) == 0
    cfg = DatasetConfig.from_yaml(ds / "dataset.yaml")
    torch.manual_seed(0)
    model = build_model({"num_classes": cfg.num_classes, "camera_backbone": "tiny", "lidar_width": 8,
                         "camera_channels": 16, "lidar_channels": 16, "head_channels": 16, "tiny_width": 8}).eval()
    ckpt = tmp / "model.pt"
    torch.save({"model_config": model.config.to_dict(), "state_dict": model.state_dict(),
                "class_names": cfg.class_names, "colors": np.asarray(cfg.colors).tolist(), "input_size": INPUT_SIZE,
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, ckpt)
    assert main(["export", str(ckpt), "--out", str(tmp / "onnx"), "--calib-data", str(ds), "--calib-split", "test"]) == 0
    return tmp, ds, ckpt


@pytest.fixture(scope="module")
def results(drive):
    """evaluate and replay metrics.json, and the inputs replay fed the model."""
    from ood_perception.replay import run as replay_run

    tmp, ds, ckpt = drive
    assert main(["evaluate", str(ckpt), "--data", str(ds), "--out", str(tmp / "eval"), "--scorers", "maxlogit,energy",
                 "--no-plots", "--quiet", "--cache-dir", str(tmp / "cache"), "--decisions", str(tmp / "onnx")]) == 0
    fed: list[dict[str, np.ndarray]] = []
    build = replay_run.build_pipeline

    def recording_pipeline(*args, **kwargs):
        pipeline = build(*args, **kwargs)
        infer = pipeline.backend.infer

        def spy(inputs, **kwargs):  # kwargs: the outputs the pipeline asks for
            fed.append({k: np.array(v) for k, v in inputs.items()})
            return infer(inputs, **kwargs)

        pipeline.backend.infer = spy
        return pipeline

    mp = pytest.MonkeyPatch()
    mp.setattr(replay_run, "build_pipeline", recording_pipeline)
    try:
        assert main(["replay", str(ds / "bags" / "00"), "--out", str(tmp / "replay"), "--model", str(tmp / "onnx"),
                     "--labels", str(ds), "--calib", str(ds / "sequences" / "00" / "calib.txt"), "--no-progress"]) == 0
    finally:
        mp.undo()
    ev = json.loads((tmp / "eval" / "metrics.json").read_text())
    rp = json.loads((tmp / "replay" / "metrics.json").read_text())
    return ev, rp, fed


def test_replay_feeds_the_model_what_evaluate_feeds_it(drive, results) -> None:
    from ood_perception.trainer.seg_data import SegmentationData

    tmp, ds, _ = drive
    _, rp, fed = results
    assert rp["bags"][0]["frames"] == FRAMES and not rp["bags"][0]["bad_inputs"]
    data = SegmentationData(ds, "test", INPUT_SIZE, tmp / "cache", show_progress=False)
    assert len(fed) == len(data) == FRAMES
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
    for i, inputs in enumerate(fed):
        s = data[i]
        assert np.array_equal(inputs["lidar"][0], s.lidar), f"frame {i}: LiDAR tensors differ"
        ref = (s.image.astype(np.float32).transpose(2, 0, 1) / 255.0 - mean) / std
        np.testing.assert_allclose(inputs["image"][0], ref, atol=1e-6)


def test_replay_metrics_equal_evaluate_metrics(results) -> None:
    ev, rp, _ = results
    assert ev["resolution"] == "camera"
    m = rp["metrics"]
    assert m["frames_with_labels"] == FRAMES and rp["info"]["score"] == "maxlogit"
    assert rp["bags"][0]["extrinsics"]["status"] == "agrees"  # --calib matches the bag's /tf_static
    for level in ("pixel", "point"):
        e, r = ev["ood"][level]["maxlogit"], m[level]
        assert r["available"]
        assert (r["n_id"], r["n_ood"]) == (e["n_id"], e["n_ood"]), level  # the same pixels / points
        assert e["n_ood"] > 0 and e["n_id"] > 0
        for key in ("auroc", "aupr_in", "aupr_out"):
            assert r[key] == pytest.approx(e[key], abs=1e-4), (level, key)
        for key in ("fpr95", "fpr95_id"):  # a threshold-crossing count: a score flip moves it by 1/n
            assert r[key] == pytest.approx(e[key], abs=max(1e-4, 2.0 / e["n_id"])), (level, key)
        assert 0.05 < e["auroc"] < 0.995  # not degenerate: the comparison means something
    for level, key in (("pixel", "segmentation"), ("point", "segmentation_point")):
        assert m[key]["available"]
        assert m[key]["miou"] == pytest.approx(ev["segmentation"][level]["fused"]["miou"], abs=1e-3), level


def test_input_resolution_is_the_other_convention(drive, results) -> None:
    """``--resolution input`` scores at the model size (labels downsampled, all in-view points):
    a different pixel set from replay's, so it is kept only as an option."""
    # (``results`` wrote the camera-resolution evaluation this compares with, in this process)
    tmp, ds, ckpt = drive
    assert main(["evaluate", str(ckpt), "--data", str(ds), "--out", str(tmp / "eval_in"), "--scorers", "maxlogit",
                 "--no-plots", "--quiet", "--cache-dir", str(tmp / "cache"), "--resolution", "input"]) == 0
    ev = json.loads((tmp / "eval_in" / "metrics.json").read_text())
    cam = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert ev["resolution"] == "input"
    n_in = ev["ood"]["pixel"]["maxlogit"]["n"]
    n_cam = cam["ood"]["pixel"]["maxlogit"]["n"]
    assert n_in < n_cam  # 32x64 model pixels vs 48x96 camera pixels per frame
    assert ev["ood"]["point"]["maxlogit"]["n"] >= cam["ood"]["point"]["maxlogit"]["n"]  # occluded points too


def test_calib_option_gives_the_dataset_extrinsics(drive) -> None:
    """``--calib`` reads the extrinsics with the dataset reader's own function; the node's default
    (camera at the LiDAR origin) is not the synthetic rig's (camera 0.27 m ahead)."""
    from ood_perception.data import SemanticKittiReader
    from ood_perception.replay.engine import node_default_extrinsics
    from ood_perception.replay.params import extrinsics_from_kitti_calib

    _, ds, _ = drive
    T = extrinsics_from_kitti_calib(ds / "sequences" / "00" / "calib.txt")
    assert np.array_equal(T, SemanticKittiReader(ds)[0].calib.T_cam_lidar)
    assert not np.allclose(T, node_default_extrinsics(), atol=1e-3)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        extrinsics_from_kitti_calib(ds / "nope.txt")


def test_tf_static_check_flags_wrong_extrinsics(drive) -> None:
    """Replay warns (metrics.json ``bags[].extrinsics``) when its extrinsics differ from the bag's
    /tf_static, e.g. the node's default instead of the rig's: the offset is the camera mount."""
    from ood_perception.data.bag_reader import BagSource
    from ood_perception.replay.engine import check_tf_static, node_default_extrinsics
    from ood_perception.replay.params import extrinsics_from_kitti_calib
    from ood_perception.world.config import WorldConfig

    _, ds, _ = drive
    with BagSource(ds / "bags" / "00") as src:
        good = check_tf_static(src, "camera_optical", "lidar", extrinsics_from_kitti_calib(ds / "sequences/00/calib.txt"))
        bad = check_tf_static(src, "camera_optical", "lidar", node_default_extrinsics())
        unknown = check_tf_static(src, "other_camera", "lidar", node_default_extrinsics())
    assert good["status"] == "agrees" and good["translation_m"] < 1e-6
    mount = np.linalg.norm(WorldConfig().camera.xyz)
    assert bad["status"] == "differs" and bad["translation_m"] == pytest.approx(mount, abs=1e-6)
    assert unknown == {"status": "absent"}


def _anomaly_objects(frame, ood_ids) -> dict[int, int]:
    """{semantic | instance << 16: pixels} of a frame's anomaly pixels, counted here with numpy."""
    sem = frame.pixel_labels.astype(np.int64) & 0xFFFF
    on = np.isin(sem, ood_ids)
    keys = sem[on] | frame.pixel_instances[on].astype(np.int64) << 16
    k, n = np.unique(keys, return_counts=True)
    return dict(zip(k.tolist(), n.tolist(), strict=True))


def test_replay_alert_metrics_take_instances_from_the_label_folder(drive, results) -> None:
    """Issue 17: replay with ``--labels`` tells anomaly objects apart by the dataset's pixel
    instances (the bag's camera/labels are semantic ids only); the same bag with its label topic
    gives the same frame-level numbers and one object per anomaly class."""
    from ood_perception.data import DatasetConfig, SemanticKittiReader
    from ood_perception.replay.alert_metrics import OBJECTS_FROM_CLASSES, OBJECTS_FROM_INSTANCES

    tmp, ds, _ = drive
    _, rp, _ = results
    cfg = DatasetConfig.from_yaml(ds / "dataset.yaml")
    reader = SemanticKittiReader(ds, sequences=["00"])
    objs = [_anomaly_objects(reader[i], cfg.ood_ids) for i in range(FRAMES)]
    a = rp["alerts"]
    assert a["available"] and a["frames"] == FRAMES
    assert a["objects_from"] == OBJECTS_FROM_INSTANCES and a["frames_with_pixel_instances"] == FRAMES
    assert a["frame"]["n_positive"] == sum(sum(o.values()) >= 50 for o in objs)
    assert a["frame"]["n_negative"] == sum(not o for o in objs)
    in_view = sorted({k for o in objs for k, n in o.items() if n >= 50})
    assert in_view and any(k >> 16 for k in in_view)  # instance ids are in the keys
    assert sorted(o["key"] for o in a["objects"]["list"] if o["in_view"]) == in_view
    assert a["objects"]["in_view"]["n"] == len(in_view)
    assert rp["components"]["available"] and rp["components"]["frames"] == FRAMES
    assert a["object_scores"]["observations"]["n"] >= 1  # scored LiDAR points on some object
    # the bag's own label topic: semantic ids only
    assert main(["replay", str(ds / "bags" / "00"), "--out", str(tmp / "replay_topic"), "--model", str(tmp / "onnx"),
                 "--dataset-config", str(ds / "dataset.yaml"), "--calib", str(ds / "sequences" / "00" / "calib.txt"),
                 "--no-progress"]) == 0
    b = json.loads((tmp / "replay_topic" / "metrics.json").read_text())["alerts"]
    assert b["objects_from"] == OBJECTS_FROM_CLASSES and b["frames_with_pixel_instances"] == 0
    assert b["frame"] == a["frame"] and b["false_alerts"] == a["false_alerts"]
    per_class = sorted({k & 0xFFFF for o in objs for k in o})
    assert sorted({o["key"] for o in b["objects"]["list"]}) == per_class


def test_evaluate_reports_components_and_object_scores(drive, results) -> None:
    """Issue 17 in ``evaluate``: component metrics at the 95%-ID-pixel threshold (here of the evaluated
    split: the dataset has no val split) and the object-score separation, which equals replay's
    (same points, same maxlogit scores up to ONNX Runtime vs torch)."""
    from scipy import ndimage

    from ood_perception.data import DatasetConfig, SemanticKittiReader

    tmp, ds, _ = drive
    ev, rp, _ = results
    c = ev["components"]
    assert c["available"] and c["scorer"] == "maxlogit" and c["frames"] == FRAMES
    assert c["threshold"] == ev["ood"]["pixel"]["maxlogit"]["threshold_id"]
    assert "evaluated split" in c["threshold_source"]
    # ground-truth components: 8-connected components of the anomaly mask with >= min_gt_pixels px
    cfg = DatasetConfig.from_yaml(ds / "dataset.yaml")
    reader = SemanticKittiReader(ds, sequences=["00"])
    n_gt = 0
    for i in range(FRAMES):
        lab, n = ndimage.label(cfg.ood_mask(reader[i].pixel_labels), structure=np.ones((3, 3)))
        n_gt += int((np.bincount(lab.ravel())[1:] >= c["min_gt_pixels"]).sum())
    assert c["n_gt_components"] == n_gt > 0
    assert all(r["tp"] + r["fn"] == n_gt for r in c["per_tau"])
    # the checkpoint's object-score separation (mean point score of the headline scorer) is over the same
    # observations as replay's; replay decides on objects here, so it scores them as the node does
    o, r = ev["object_scores"], rp["alerts"]["object_scores"]
    assert o["available"] and o["known_ids"] == rp["alerts"]["config"]["known_ids"] == [10, 11, 18, 30, 31, 252, 253, 254]
    for unit in ("observations", "tracks"):
        assert (o[unit]["n"], o[unit].get("n_ood"), o[unit].get("n_id")) == (r[unit]["n"], r[unit].get("n_ood"), r[unit].get("n_id"))
    assert rp["alerts"]["object_scores_from"].startswith("the object decisions' score")
    # evaluate --decisions: the node's decisions over the dataset equal replay's over the bag of the same frames
    d = ev["decisions"]
    assert d["alerts"]["object_scores_from"] == rp["alerts"]["object_scores_from"]
    assert d["alerts"]["levels"] == rp["alerts"]["levels"] and d["alerts"]["frames"] == rp["alerts"]["frames"] == FRAMES
    for unit in ("observations", "tracks"):
        assert d["alerts"]["object_scores"][unit]["n"] == r[unit]["n"]
        if r[unit]["available"]:
            assert d["alerts"]["object_scores"][unit]["auroc"] == pytest.approx(r[unit]["auroc"], abs=1e-6), unit
    assert d["alerts"]["frame"]["scores"].get("auroc") == pytest.approx(rp["alerts"]["frame"]["scores"].get("auroc"), abs=1e-6)
    assert d["components"]["f1_mean"] == pytest.approx(rp["components"]["f1_mean"], abs=1e-9)
    report = (tmp / "eval" / "report.md").read_text()
    assert "Component metrics" in report and "Object-score separation" in report and "The node's decisions" in report


def test_evaluate_calibrates_the_component_threshold_on_val(drive, results) -> None:
    """With a val split the component threshold comes from its ID pixels: a val split holding the
    same frames gives exactly the threshold and components of the fallback."""
    tmp, ds, ckpt = drive
    ev, _, _ = results
    ds2 = tmp / "ds_val"
    ds2.mkdir(exist_ok=True)
    if not (ds2 / "sequences").exists():
        (ds2 / "sequences").symlink_to(ds / "sequences")
    meta = yaml.safe_load((ds / "dataset.yaml").read_text())
    meta["splits"] = {"test": ["00"], "val": ["00"]}
    (ds2 / "dataset.yaml").write_text(yaml.safe_dump(meta))
    assert main(["evaluate", str(ckpt), "--data", str(ds2), "--split", "test", "--out", str(tmp / "eval_val"),
                 "--scorers", "maxlogit", "--no-plots", "--quiet", "--cache-dir", str(tmp / "cache_val")]) == 0
    c = json.loads((tmp / "eval_val" / "metrics.json").read_text())["components"]
    assert c["threshold_source"] == f"the val split ({FRAMES} frames)"
    assert c["threshold"] == ev["components"]["threshold"]
    assert c["per_tau"] == ev["components"]["per_tau"]
def _replay(args, out):
    assert main(["replay", *args, "--out", str(out), "--no-progress"]) == 0
    return json.loads((out / "metrics.json").read_text())


def _same_metrics(a, b) -> None:
    for key in ("pixel", "point", "segmentation", "segmentation_point"):
        assert a["metrics"][key] == b["metrics"][key], key


def test_replay_without_flags_equals_replay_with_calib_and_dataset_config(drive, results) -> None:
    """Issue 13: ``replay BAG --out DIR`` on a synth bag: the label map comes from the bag's metadata
    (or the dataset.yaml next to it), the extrinsics from its /tf_static, so the metrics equal those
    with ``--calib`` and ``--dataset-config`` (and with the label folder)."""
    tmp, ds, _ = drive
    _, rp_folder, _ = results
    bag, model = str(ds / "bags" / "00"), ["--model", str(tmp / "onnx")]
    plain = _replay([bag, *model], tmp / "plain")
    flags = _replay([bag, *model, "--calib", str(ds / "sequences/00/calib.txt"),
                     "--dataset-config", str(ds / "dataset.yaml")], tmp / "flags")
    _same_metrics(plain, flags)
    _same_metrics(plain, rp_folder)
    m = plain["metrics"]
    assert m["frames_with_labels"] == FRAMES and m["pixel"]["available"] and m["pixel"]["n_ood"] > 0
    e = plain["bags"][0]["extrinsics"]
    assert e["source"] == "/tf_static" and e["frames"] == "lidar -> camera_optical" and e["status"] == "agrees"
    np.testing.assert_allclose(e["T_cam_lidar"], flags["bags"][0]["extrinsics"]["T_cam_lidar"], atol=1e-6)
    assert flags["bags"][0]["extrinsics"]["source"].startswith("--calib")
    assert plain["info"]["label_map"] == "the bag's metadata"
    # the params (node default) on request: the camera mount is missing, and metrics.json says so
    params = _replay([bag, *model, "--extrinsics", "params"], tmp / "params")
    pe = params["bags"][0]["extrinsics"]
    assert pe["source"] == "node default" and pe["status"] == "differs" and pe["translation_m"] > 0.2


def test_dataset_yaml_next_to_a_bag_without_metadata_map(drive, tmp_path) -> None:
    """A bare storage file copied into the dataset (no metadata.yaml): dataset.yaml two folders up."""
    from ood_perception.replay.labels import dataset_yaml_near, find_label_map

    _, ds, _ = drive
    assert dataset_yaml_near(ds / "bags" / "00") == (ds / "dataset.yaml").resolve()
    (db,) = (ds / "bags" / "00").glob("*.db3")
    assert find_label_map(db).source == str((ds / "dataset.yaml").resolve())
    assert find_label_map(ds / "bags" / "00").source == "the bag's metadata"
    lonely = tmp_path / "a" / "b" / "c"
    lonely.mkdir(parents=True)
    assert find_label_map(lonely, model_classes=["x"]).config is None  # nothing found, not SemanticKITTI's


def test_labels_of_another_label_space_are_refused(drive, capsys) -> None:
    """A model whose classes are not the bag's label map: one line naming both, nothing written."""
    import shutil

    tmp, ds, _ = drive
    other = tmp / "other_model"
    shutil.copytree(tmp / "onnx", other)
    spec = json.loads((other / "model.json").read_text())
    spec["class_names"] = ["car", "bicycle", "motorcycle", *spec["class_names"][3:]]
    (other / "model.json").write_text(json.dumps(spec))
    capsys.readouterr()
    assert main(["replay", str(ds / "bags" / "00"), "--out", str(tmp / "refused"), "--model", str(other),
                 "--no-progress"]) == 1
    # decision warnings are printed once per process (replay.run._WARNED): whether one shows here
    # depends on which tests ran before in this process, so only the error lines are counted
    err = "\n".join(ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("replay: warning:"))
    assert len(err.splitlines()) == 1, err
    assert "the bag's metadata" in err and "motorcycle" not in err.split("is not the label space")[0]
    assert f"the model {other}" in err and "motorcycle" in err
    assert not (tmp / "refused").exists()
