"""Replay through the real FusionPipeline with a small exact backend: outputs, metrics, layouts,
determinism, damaged bags and the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from replay_bags import ANOMALY, T_CAM_LIDAR, H, W, frame_arrays, truncate_bag, write_drive_bag

from ood_perception import cli
from ood_perception.data.bag_reader import BagSource, MissingTopicError
from ood_perception.replay.engine import ReplaySettings, replay_bag

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


class RednessBackend:
    """score = red - green of the de-normalised image (an exact, checkable 'model')."""

    def __init__(self) -> None:
        self.spec = SimpleNamespace(
            image_hw=(H, W), mean=MEAN.ravel().tolist(), std=STD.ravel().tolist(), threshold=0.5,
            output_names=["class_map", "score_map"], files={}, sha256="test",
        )

    def infer(self, inputs):
        img = inputs["image"][0] * STD + MEAN
        score = (img[0] - img[1])[None].astype(np.float32)
        return {"score_map": score, "class_map": np.zeros_like(score, dtype=np.int64)}


def dataset_config():
    from ood_perception.data import DatasetConfig

    return DatasetConfig.from_dict({
        "labels": {0: "unlabeled", 40: "road", 150: "anomaly"},
        "color_map": {0: [0, 0, 0], 40: [255, 0, 255], 150: [0, 0, 255]},
        "learning_map": {0: 0, 40: 1, 150: 0}, "learning_map_inv": {0: 0, 1: 40}, "ood_ids": [150],
    })


def pipeline():
    from ood_perception.pipeline import AlertConfig, FusionConfig, FusionPipeline

    cfg = FusionConfig(min_region_pixels=20, alert=AlertConfig(raise_k=2, raise_n=3, clear_frames=2, cooldown_s=0.0))
    return FusionPipeline(RednessBackend(), cfg)


def settings(**kw):
    return ReplaySettings(T_cam_lidar=T_CAM_LIDAR, **kw)


def read_outputs(path):
    from ood_perception.codec.conversions import image_to_numpy, pointcloud2_to_array

    out = {"mask": [], "score": [], "points": [], "alerts": []}
    with BagSource(path) as src:
        for m in src.messages(src.topics):
            key = m.topic.split("/")[-1]
            if key == "tf_static":
                continue
            if key in ("mask", "score"):
                out[key].append((m.msg.header.stamp.sec, m.msg.header.stamp.nanosec, image_to_numpy(m.msg)))
            elif key == "points":
                out[key].append(pointcloud2_to_array(m.msg))
            else:
                out[key].append((m.msg.level, m.msg.description, len(m.msg.regions), m.msg.header.frame_id))
    return out


def test_replay_outputs_and_metrics_match_independent_computation(tmp_path):
    from ood_perception.data.bag_output import OutputBag
    from ood_perception.metrics import ood_metrics

    bag = write_drive_bag(tmp_path / "in", frames=6, anomaly_frames=(2, 3, 4))
    with OutputBag(tmp_path / "output") as out:
        res = replay_bag(bag, pipeline(), settings(), out, dataset_config())
    assert res.error is None and len(res.frames) == 6
    got = read_outputs(tmp_path / "output")
    assert len(got["mask"]) == len(got["alerts"]) == 6
    scores, oods = [], []
    for i, (sec, nsec, mask) in enumerate(got["mask"]):
        rgb, labels, _ = frame_arrays(i, i in (2, 3, 4))
        expected = rgb[..., 0].astype(np.float32) / 255 - rgb[..., 1].astype(np.float32) / 255
        np.testing.assert_allclose(got["score"][i][2], expected, atol=1e-5)
        assert np.array_equal(mask == 255, expected >= 0.5)  # mask is exactly the red square
        assert (sec, nsec) == (1 + (i // 10), (i % 10) * 100_000_000)  # input stamps kept
        scores.append(expected.ravel())
        oods.append((labels == ANOMALY).ravel())
    # alert sequence: k=2 of 3 raises on the second anomalous frame, clears after 2 clean frames
    levels = [a[0] for a in got["alerts"]]
    assert levels == [0, 0, 1, 2, 2, 2] and got["alerts"][0][3] == "camera"
    summary = res.metrics.summary()
    ref = ood_metrics(np.concatenate(scores), np.concatenate(oods))
    for k in ("auroc", "fpr95", "fpr95_id", "aupr_in", "aupr_out", "n_id", "n_ood"):
        assert summary["pixel"][k] == pytest.approx(ref[k], abs=1e-6), k
    # points: the scored in-view points carry the score of their pixel
    pts = got["points"][3]
    assert set(pts.dtype.names) == {"x", "y", "z", "intensity", "label", "ood_score"} and len(pts) > 100
    assert summary["point"]["available"] and summary["point"]["auroc"] > 0.99
    assert summary["segmentation"]["miou"] == pytest.approx(1.0)


class FlakyBackend(RednessBackend):
    """Fails on its third call (a model error mid-drive: that frame must come out DEGRADED)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def infer(self, inputs):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("device lost")
        return super().infer(inputs)


@pytest.mark.parametrize("backend", [RednessBackend, FlakyBackend])
def test_overlapped_inference_gives_the_serial_outputs(tmp_path, backend):
    """Overlap (the model of frame k on a second thread while k-1 is finished) changes only timing:
    the output bag's messages, the frame records and the metrics equal the serial run's."""
    from ood_perception.data.bag_output import OutputBag
    from ood_perception.pipeline import AlertConfig, FusionConfig, FusionPipeline

    bag = write_drive_bag(tmp_path / "in", frames=8, anomaly_frames=(2, 3, 4, 6))
    runs = {}
    for overlap in (False, True):
        cfg = FusionConfig(min_region_pixels=20, alert=AlertConfig(raise_k=2, raise_n=3, clear_frames=2, cooldown_s=0.0))
        seen = []
        with OutputBag(tmp_path / f"out_{overlap}") as out:
            res = replay_bag(bag, FusionPipeline(backend(), cfg), settings(overlap=overlap), out, dataset_config(),
                             on_frame=lambda rec, r, seen=seen: seen.append(rec.index))
        runs[overlap] = (res, read_outputs(tmp_path / f"out_{overlap}"), seen)
    (a, out_a, seen_a), (b, out_b, seen_b) = runs[False], runs[True]
    assert len(a.frames) == len(b.frames) == 8 and seen_a == seen_b == list(range(8))
    key = [(f.stamp_ns, f.level, f.description, f.frame_score, f.num_regions) for f in a.frames]
    assert key == [(f.stamp_ns, f.level, f.description, f.frame_score, f.num_regions) for f in b.frames]
    if backend is FlakyBackend:
        assert a.frames[2].level == 3 and "model failure: RuntimeError: device lost" in a.frames[2].description
    assert out_a["alerts"] == out_b["alerts"]
    for k in ("mask", "score"):
        assert len(out_a[k]) == len(out_b[k]) and all(
            x[:2] == y[:2] and np.array_equal(x[2], y[2], equal_nan=True) for x, y in zip(out_a[k], out_b[k], strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(out_a["points"], out_b["points"], strict=True))
    assert a.metrics.summary()["pixel"] == b.metrics.summary()["pixel"]


@pytest.mark.parametrize(("storage", "encoding", "layout", "prefix"), [
    ("sqlite3", "bgra8", "ouster", ""), ("mcap", "bgra8", "plain", "/vehicle"), ("sqlite3", "rgb8", "ouster", ""),
])
def test_other_layouts_replay_identically(tmp_path, storage, encoding, layout, prefix):
    ref = replay_bag(write_drive_bag(tmp_path / "a", frames=4), pipeline(), settings(), None, dataset_config())
    other = write_drive_bag(tmp_path / "b", storage=storage, frames=4, encoding=encoding, layout=layout, prefix=prefix)
    res = replay_bag(other, pipeline(), settings(), None, dataset_config())
    assert [f.level for f in res.frames] == [f.level for f in ref.frames]
    assert [f.frame_score for f in res.frames] == [f.frame_score for f in ref.frames]
    a, b = ref.metrics.summary(), res.metrics.summary()
    assert a["pixel"] == b["pixel"] and a["point"] == b["point"]


def test_missing_topic_lists_existing(tmp_path):
    bag = write_drive_bag(tmp_path / "a", frames=1)
    with pytest.raises(MissingTopicError, match=r"'lidar/velodyne' not found.*/lidar/points \[sensor_msgs/msg/PointCloud2\]"):
        replay_bag(bag, pipeline(), settings(topics={"points": "lidar/velodyne"}), None, dataset_config())


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bag_keeps_results_up_to_damage(tmp_path, storage):
    from ood_perception.data.bag_output import OutputBag

    bag = truncate_bag(write_drive_bag(tmp_path / "a", storage=storage, frames=40), 0.5)
    with OutputBag(tmp_path / "output") as out:
        res = replay_bag(bag, pipeline(), settings(), out, dataset_config())
    assert res.error and str(bag) in res.error and "after message #" in res.error
    assert 5 < len(res.frames) < 40
    assert len(read_outputs(tmp_path / "output")["alerts"]) == len(res.frames)


def test_no_labels_means_no_metrics(tmp_path):
    bag = write_drive_bag(tmp_path / "a", frames=3, labels=False, layout="ouster")
    # the ouster cloud has a label field: strip labels entirely by naming a field that is absent
    res = replay_bag(bag, pipeline(), settings(label_field="none"), None, dataset_config())
    s = res.metrics.summary()
    assert s["frames_with_labels"] == 0 and not s["pixel"]["available"]
    assert all(not f.has_labels for f in res.frames)


def test_cli_outputs_deterministic_and_report(tmp_path, monkeypatch):
    """The CLI path (run_job) twice on one bag: identical output bag and metrics.json; report exists."""
    from ood_perception.replay import run as run_mod

    monkeypatch.setattr(run_mod, "build_pipeline", lambda *a, **k: pipeline())
    cfg = tmp_path / "dataset.yaml"
    dataset_config().write_yaml(cfg)
    bag = write_drive_bag(tmp_path / "a", frames=5)
    outs = []
    for k, overlap in enumerate((True, True, False)):  # the third run: --serial
        run_mod.run_replay([bag], tmp_path / f"out{k}", settings(overlap=overlap), dataset_config=cfg, progress=False)
        outs.append(tmp_path / f"out{k}")
    for k in (1, 2):
        assert (outs[0] / "output/output.mcap").read_bytes() == (outs[k] / "output/output.mcap").read_bytes()
        assert (outs[0] / "metrics.json").read_bytes() == (outs[k] / "metrics.json").read_bytes()
    data = json.loads((outs[0] / "metrics.json").read_text())
    assert data["metrics"]["pixel"]["available"] and len(data["bags"][0]["per_frame"]) == 5
    html = (outs[0] / "report.html").read_text()
    assert "ROC" in html and "x real time" in html and html.count("data:image/png;base64,") >= 5
    assert not list(outs[0].glob(".*tmp*"))  # no temporaries left behind


def test_several_bags_workers_and_shards(tmp_path, monkeypatch):
    from ood_perception.replay import run as run_mod

    monkeypatch.setattr(run_mod, "build_pipeline", lambda *a, **k: pipeline())
    cfg = tmp_path / "dataset.yaml"
    dataset_config().write_yaml(cfg)
    bags = [write_drive_bag(tmp_path / f"bag{i}", frames=3, anomaly_frames=(i,)) for i in range(3)]
    assert run_mod.select_shard(bags, "1/2") == [bags[1]]
    assert run_mod.select_shard(bags, "0/2") == [bags[0], bags[2]]
    with pytest.raises(ValueError, match="i/n"):
        run_mod.select_shard(bags, "x")
    res = run_mod.run_replay(bags, tmp_path / "out", settings(), dataset_config=cfg, shard="0/2", progress=False)
    assert [r.bag for r in res] == [str(bags[0]), str(bags[2])]
    pooled = json.loads((tmp_path / "out/metrics.json").read_text())
    assert (tmp_path / "out/bag0/output/metadata.yaml").exists() and (tmp_path / "out/bag2/report.html").exists()
    n = sum(json.loads((tmp_path / f"out/{b}/metrics.json").read_text())["metrics"]["pixel"]["n"] for b in ("bag0", "bag2"))
    assert pooled["metrics"]["pixel"]["n"] == n == 2 * 3 * H * W


def test_params_file_maps_like_the_node(tmp_path):
    from ood_perception.replay.params import node_parameters, settings_from_params

    f = tmp_path / "vehicle.yaml"
    f.write_text(
        "/**:\n  ros__parameters:\n    slop: 0.08\n"
        "fusion_segmentation:\n  ros__parameters:\n    threshold: .nan\n    raise_k: 2\n    raise_n: 4\n"
        "    sync_queue_size: 7\n    min_region_pixels: 12\n    negate_lidar_y: true\n"
        "    lidar_to_camera:\n      xyz: [0.0, 0.0, 0.0]\n      rpy: [-1.5707963267948966, 0.0, -1.5707963267948966]\n"
    )
    s = settings_from_params(node_parameters(f))
    assert s.sync == {"slop": 0.08, "queue_size": 7}
    assert s.fusion["threshold"] is None and s.fusion["min_region_pixels"] == 12
    assert (s.fusion["alert"].raise_k, s.fusion["alert"].raise_n) == (2, 4) and s.negate_y
    np.testing.assert_allclose(s.T_cam_lidar, T_CAM_LIDAR, atol=1e-12)
    np.testing.assert_allclose(ReplaySettings().T_cam_lidar, T_CAM_LIDAR, atol=1e-12)  # the node's default
    bad = tmp_path / "bad.yaml"
    bad.write_text("other_node:\n  ros__parameters: {a: 1}\n")
    with pytest.raises(ValueError, match="no ros__parameters for any of fusion_segmentation"):
        node_parameters(bad)


def test_model_threads_default_to_the_cores_shared_by_the_workers(tmp_path, capsys):
    from ood_perception.replay.run import auto_threads

    assert auto_threads(1, cpus=2) == 2 and auto_threads(2, cpus=2) == 1 and auto_threads(3, cpus=2) == 1
    assert auto_threads(2, cpus=16) == 8 and auto_threads(0, cpus=4) == 4 and auto_threads(1) >= 1
    assert cli.main(["replay", str(tmp_path / "none.mcap"), "--out", str(tmp_path / "o"), "--threads", "-1"]) != 0
    err = capsys.readouterr().err
    assert "threads must be >= 0" in err and len(err.strip().splitlines()) == 1


def test_replay_records_its_model_threads_and_warns_when_they_oversubscribe(tmp_path, capsys):
    bag = write_drive_bag(tmp_path / "bag", frames=3)
    out = tmp_path / "out"
    assert cli.main(["replay", str(bag), "--out", str(out), "--threads", "64", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "x 64 model threads > the" in err and "usable cores" in err
    info = json.loads((out / "metrics.json").read_text())["info"]
    assert info["model_threads"] == 64 and info["decision_warnings"] == "none"
