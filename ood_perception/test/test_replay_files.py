"""Replay's files and paths (issue 14 item 6): per-bag output folders that stay inside ``--out``
and never collide, SIGINT keeping the results up to the stop."""

from __future__ import annotations

import json

import pytest
from replay_bags import write_drive_bag
from test_replay_engine import dataset_config, pipeline, settings

from ood_perception.replay import run as run_mod
from ood_perception.replay.run import bag_output_name


@pytest.mark.parametrize("path, taken, expected", [
    ("/data/drive_07", set(), "drive_07"),
    ("/data/drive_07/", set(), "drive_07"),
    ("/data/drive_07/sub/..", set(), "drive_07"),  # normalised, not ".."
    ("/data/drive 07 (copy)", set(), "drive_07__copy_"),
    ("/data/.hidden", set(), "hidden"),
    ("/data/...", set(), "bag"),
    ("/", set(), "bag"),
    ("/data/metrics.json", set(), "bag_metrics.json"),
    ("/data/output", set(), "bag_output"),
    ("/x/drive", {"drive"}, "drive_2"),
    ("/x/Drive", {"drive", "drive_2"}, "Drive_3"),
])
def test_bag_output_name(path, taken, expected):
    assert bag_output_name(path, taken) == expected


def test_bag_output_name_of_dot_is_the_cwd_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bag_output_name(".") == tmp_path.name and bag_output_name("..") == tmp_path.parent.name


def test_several_bags_named_dot_and_dotdot_stay_in_out(tmp_path, monkeypatch):
    """The case: bags given as ``.`` and ``x/..`` (both name a real bag); the behaviour: each gets
    its own folder inside --out (before: ``.`` wrote its results into --out itself, where the pooled
    ones overwrote them, and ``x/..`` wrote into --out's parent); pooled results in --out."""
    monkeypatch.setattr(run_mod, "build_pipeline", lambda *a, **k: pipeline())
    cfg = tmp_path / "dataset.yaml"
    dataset_config().write_yaml(cfg)
    work = tmp_path / "work"
    work.mkdir()
    a = write_drive_bag(tmp_path / "work/drive", frames=2)
    (a / "sub").mkdir()
    b = write_drive_bag(tmp_path / "work/drive_b", frames=3)
    monkeypatch.chdir(b)
    out = tmp_path / "work/out"
    res = run_mod.run_replay([".", "../drive/sub/.."], out, settings(), dataset_config=cfg, progress=False)
    assert len(res) == 2
    assert sorted(p.name for p in out.iterdir()) == ["drive", "drive_b", "metrics.json", "report.html", "shard.json", "timing.json"]
    per_bag = {d: json.loads((out / d / "metrics.json").read_text())["bags"] for d in ("drive", "drive_b")}
    assert [len(v) for v in per_bag.values()] == [1, 1]
    assert per_bag["drive"][0]["frames"] == 2 and per_bag["drive_b"][0]["frames"] == 3
    assert len(json.loads((out / "metrics.json").read_text())["bags"]) == 2  # the pooled ones
    assert not (tmp_path / "work/metrics.json").exists() and not (a / "metrics.json").exists()


def test_same_named_bags_get_distinct_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "build_pipeline", lambda *a, **k: pipeline())
    bags = [write_drive_bag(tmp_path / f"{d}/bag", frames=1) for d in ("x", "y")]
    run_mod.run_replay(bags, tmp_path / "out", settings(), dataset_config=None, progress=False)
    assert (tmp_path / "out/bag/output/metadata.yaml").is_file() and (tmp_path / "out/bag_2/output/metadata.yaml").is_file()


def test_replay_steps_over_a_corrupted_chunk(tmp_path, monkeypatch, capsys):
    """The case: a replayed MCAP bag with one flipped byte in its second chunk. Before: rc 0 and
    silently changed results. Now: the chunk is skipped, frames after it are replayed, rc 1, and
    metrics.json and stderr name the chunk, the CRC mismatch and the messages lost."""
    from replay_bags import storage_file
    from test_bag_damage import chunks, flip_byte

    from ood_perception import cli
    from ood_perception.data.mcap_chunks import add_chunk_crcs

    monkeypatch.setattr(run_mod, "build_pipeline", lambda *a, **k: pipeline())
    cfg = tmp_path / "dataset.yaml"
    dataset_config().write_yaml(cfg)
    bag = write_drive_bag(tmp_path / "b", storage="mcap", frames=160)
    add_chunk_crcs(storage_file(bag))
    intact = run_mod.run_replay([bag], tmp_path / "intact", settings(), dataset_config=cfg, progress=False)[0]
    cs = chunks(storage_file(bag))
    flip_byte(storage_file(bag), cs[1][2] - 100)
    rc = cli.main(["replay", str(bag), "--out", str(tmp_path / "out"), "--dataset-config", str(cfg), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "CRC mismatch" in err and f"chunk at byte {cs[1][0]}" in err
    data = json.loads((tmp_path / "out/metrics.json").read_text())["bags"][0]
    (skip,) = data["skipped"]
    assert skip["kind"] == "chunk" and skip["messages_lost"] == len(cs[1][4])
    chunk_frames = len({t for _, t in cs[1][4]})
    after = [f for f in data["per_frame"] if f["bag_time_ns"] > cs[1][1].end_ns]
    assert len(after) > 0.3 * len(intact.frames)  # the frames after the damaged chunk were replayed
    assert len(intact.frames) - chunk_frames - 2 <= data["frames"] < len(intact.frames)

