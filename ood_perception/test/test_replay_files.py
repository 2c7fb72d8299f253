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
    assert sorted(p.name for p in out.iterdir()) == ["drive", "drive_b", "metrics.json", "report.html", "timing.json"]
    per_bag = {d: json.loads((out / d / "metrics.json").read_text())["bags"] for d in ("drive", "drive_b")}
    assert [len(v) for v in per_bag.values()] == [1, 1]
    assert per_bag["drive"][0]["frames"] == 2 and per_bag["drive_b"][0]["frames"] == 3
    assert len(json.loads((out / "metrics.json").read_text())["bags"]) == 2  # the pooled ones
    assert not (tmp_path / "work/metrics.json").exists() and not (a / "metrics.json").exists()


def test_same_named_bags_get_distinct_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "build_pipeline", lambda *a, **k: pipeline())
    bags = [write_drive_bag(tmp_path / f"{d}/bag", frames=1) for d in ("x", "y")]
    run_mod.run_replay(bags, tmp_path / "out", settings(), dataset_config=None, progress=False)
    assert (tmp_path / "out/bag/output.mcap").is_file() and (tmp_path / "out/bag_2/output.mcap").is_file()
