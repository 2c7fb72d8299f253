"""Replay's output folder (issue 13 item 3): the output bag is a rosbag2 directory that rosbags'
AnyReader opens, with /tf_static of the extrinsics used; a failed run leaves nothing behind;
shards replayed apart merge into the metrics of one run over all bags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from replay_bags import T_CAM_LIDAR, write_drive_bag
from test_replay_engine import dataset_config, pipeline, settings

from ood_perception.cli import main
from ood_perception.replay import run as run_mod


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setattr(run_mod, "build_pipeline", lambda *a, **k: pipeline())


def test_output_bag_is_a_rosbag2_directory_with_tf_static(tmp_path, fake_model) -> None:
    from rosbags.highlevel import AnyReader

    from ood_perception.codec.tf import StaticTransforms
    from ood_perception.data.bag_output import output_typestore

    bag = write_drive_bag(tmp_path / "in", frames=4)
    run_mod.run_replay([bag], tmp_path / "out", settings(), progress=False)
    out = tmp_path / "out" / "output"
    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap" and meta["relative_file_paths"] == ["output.mcap"]
    topics = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    assert topics["/tf_static"]["message_count"] == 1 and topics["/ood/alerts"]["message_count"] == 4
    qos = topics["/tf_static"]["topic_metadata"]["offered_qos_profiles"][0]
    assert qos["durability"] == "transient_local" and qos["reliability"] == "reliable"
    with AnyReader([out], default_typestore=output_typestore()) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts["/ood/mask"] == counts["/ood/score"] == counts["/ood/points"] == 4
        (conn,) = [c for c in reader.connections if c.topic == "/tf_static"]
        (msg,) = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages([conn])]
    tf = msg.transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("lidar", "camera")  # the input bag's frame ids
    np.testing.assert_allclose(StaticTransforms([msg]).lookup("camera", "lidar"), T_CAM_LIDAR, atol=1e-9)
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    e = data["bags"][0]["extrinsics"]
    assert e["source"] == "node default" and e["status"] == "absent"  # the test bag has no /tf_static
    assert not list(tmp_path.glob(".*")) and not list((tmp_path / "out").glob(".*"))


def test_failed_run_leaves_nothing(tmp_path, fake_model, monkeypatch) -> None:
    """A bag that fails mid-replay: no output folder, no partial bag, no temporary folder. With
    several bags, the bags that finished keep their whole folders, and no manifest marks the run
    finished (so --merge refuses it)."""
    real = run_mod.replay_bag
    bags = [write_drive_bag(tmp_path / f"bag{i}", frames=4) for i in range(2)]

    def failing(bag, *args, **kwargs):
        def boom(rec, result):
            if rec.index == 2 and str(bag).endswith("bag1"):
                raise RuntimeError("disk full")
        return real(bag, *args, on_frame=boom, **kwargs)

    monkeypatch.setattr(run_mod, "replay_bag", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        run_mod.run_replay([bags[1]], tmp_path / "single", settings(), progress=False)
    assert not (tmp_path / "single").exists()
    with pytest.raises(RuntimeError, match="disk full"):
        run_mod.run_replay(bags, tmp_path / "multi", settings(), progress=False)
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == ["bag0"]
    assert (tmp_path / "multi/bag0/output/metadata.yaml").is_file() and (tmp_path / "multi/bag0/state.npz").is_file()
    assert not [p for p in tmp_path.rglob(".*")]
    with pytest.raises(FileNotFoundError, match="not a finished replay output"):
        run_mod.merge_replays([tmp_path / "multi"], tmp_path / "merged")


def _without_info(path):
    data = json.loads(path.read_text())
    data.pop("info")
    return data


def test_merged_shards_equal_one_run(tmp_path, fake_model, capsys) -> None:
    cfg = tmp_path / "labels.yaml"
    dataset_config().write_yaml(cfg)
    bags = [write_drive_bag(tmp_path / f"bag{i}", frames=4, anomaly_frames=(i, i + 1)) for i in range(3)]
    run_mod.run_replay(bags, tmp_path / "all", settings(), dataset_config=cfg, progress=False)
    for i in range(2):
        # the shards in reverse bag order on purpose: the merge pools in sorted bag order as one run does
        run_mod.run_replay(bags[::-1], tmp_path / f"shard{i}", settings(), dataset_config=cfg, shard=f"{i}/2", progress=False)
    assert sorted(json.loads((tmp_path / "shard0/shard.json").read_text())["dirs"]) == [str(bags[0]), str(bags[2])]
    assert main(["replay", "--merge", str(tmp_path / "shard1"), str(tmp_path / "shard0"), "--out", str(tmp_path / "merged")]) == 0
    merged, single = _without_info(tmp_path / "merged/metrics.json"), _without_info(tmp_path / "all/metrics.json")
    assert merged == single
    assert merged["metrics"]["pixel"]["available"] and merged["metrics"]["frames_with_labels"] == 12
    assert merged["alerts"]["frame"] == single["alerts"]["frame"] and "objects" in merged["alerts"]  # alert metrics pool too
    info = json.loads((tmp_path / "merged/metrics.json").read_text())["info"]
    assert info["bags"] == [str(b) for b in bags] and info["shard"] == "merged 2 shards"
    html = (tmp_path / "merged/report.html").read_text()
    assert "3 bags" in html and "ROC" in html
    # one shard missing, one twice, or a merge of a merge: refused in one line
    capsys.readouterr()
    assert main(["replay", "--merge", str(tmp_path / "shard0"), "--out", str(tmp_path / "m2")]) == 1
    assert "shards 1/2 missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="given twice"):
        run_mod.merge_replays([tmp_path / "shard0", tmp_path / "shard0"], tmp_path / "m3")
    with pytest.raises(ValueError, match="itself a merge"):
        run_mod.merge_replays([tmp_path / "merged"], tmp_path / "m4")
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()


def test_state_round_trip_keeps_the_accumulator(tmp_path) -> None:
    from ood_perception.replay.engine import replay_bag
    from ood_perception.replay.state import load_bag_state, save_bag_state

    bag = write_drive_bag(tmp_path / "in", frames=5, anomaly_frames=(1, 2))
    res = replay_bag(bag, pipeline(), settings(), None, dataset_config())
    save_bag_state(tmp_path / "s.npz", res, {"segmentation": res.metrics}, {"model": "m"})
    back, accs, info = load_bag_state(tmp_path / "s.npz")
    assert info == {"model": "m"} and back.metrics is accs["segmentation"]
    assert back.metrics.summary() == res.metrics.summary()
    for kind in ("pixel", "point"):
        for a, b in zip(back.metrics.arrays(kind), res.metrics.arrays(kind), strict=True):
            assert np.array_equal(a, b)
    assert back.frames == res.frames and back.extrinsics == res.extrinsics
    assert [i for i, _ in back.thumbnails["best"]] == [i for i, _ in res.thumbnails["best"]]
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a replay state file"):
        load_bag_state(tmp_path / "bad.npz")


def test_unknown_label_map_is_not_scored(tmp_path, monkeypatch, capsys) -> None:
    """A model whose classes are not SemanticKITTI's and a bag with no label map near it: the labels
    are not scored (rather than with a wrong map), metrics.json and a warning say why."""
    def named_pipeline(*a, **k):
        p = pipeline()
        p.backend.spec.class_names = ["road"]
        return p

    monkeypatch.setattr(run_mod, "build_pipeline", named_pipeline)
    bag = write_drive_bag(tmp_path / "lonely" / "deeper" / "bag", frames=3)
    res = run_mod.run_replay([bag], tmp_path / "out", settings(), progress=False)
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["metrics"]["frames_with_labels"] == 0 and not data["metrics"]["pixel"]["available"]
    assert data["info"]["label_map"].startswith("none") and res[0].label_map == data["info"]["label_map"]
    # with the map given, the same model scores them (its class 'road' is the map's class)
    cfg = tmp_path / "labels.yaml"
    dataset_config().write_yaml(cfg)
    run_mod.run_replay([bag], tmp_path / "out2", settings(), dataset_config=cfg, progress=False)
    assert json.loads((tmp_path / "out2" / "metrics.json").read_text())["metrics"]["frames_with_labels"] == 3
