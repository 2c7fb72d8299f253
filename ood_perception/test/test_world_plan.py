"""Scenario planner: coverage of anomaly types and weathers, anomaly frame rate, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from ood_perception.world.config import WEATHERS, WorldConfig
from ood_perception.world.labels import ANOMALY_TYPES, world_dataset_config
from ood_perception.world.scenario import plan_dataset, split_names


@pytest.fixture(scope="module")
def test_plan():
    # the 200-frame default test set: 10 sequences x 20 frames, default knobs
    return plan_dataset(WorldConfig(), sequences=10, frames=20, seed=0, split="test")


def test_every_ood_type_and_weather_in_200_frames(test_plan):
    assert test_plan.num_frames == 200
    types = {a.name for s in test_plan.sequences for e in s.episodes for a in e.anomalies}
    assert types == {a.name for a in ANOMALY_TYPES}
    assert {s.weather for s in test_plan.sequences} == set(WEATHERS)
    near = {a.raw_id for s in test_plan.sequences for e in s.episodes for a in e.anomalies
            if a.raw_id in world_dataset_config().extra["ood_near_ids"]}
    assert near and len(near) < len(types)


def test_anomaly_frame_rate_and_episodes(test_plan):
    flags = [s.has_anomaly(i) for s in test_plan.sequences for i in range(s.frames)]
    assert 0.4 <= np.mean(flags) <= 0.6  # default rate 0.5
    cfg = test_plan.config.anomalies
    for s in test_plan.sequences:
        for e in s.episodes:
            assert 0 <= e.start < e.stop <= s.frames
            assert cfg.group[0] <= len(e.anomalies) <= cfg.group[1] + 1
            x0, _, _ = s.ego_xy_yaw(e.start)
            x1, _, _ = s.ego_xy_yaw(e.stop - 1)
            for a in e.anomalies:  # ahead of the ego during the whole episode, removed before reached
                assert a.x - x1 >= cfg.distance[0] - 1e-6
                assert a.x - x0 <= cfg.distance[1] + 1e-6 + (x1 - x0)
            assert e.est_share[0] >= cfg.point_share[0] - 1e-9


def test_train_split_is_clean_and_splits_documented():
    plan = plan_dataset(WorldConfig(), sequences=5, frames=4, seed=3)
    assert split_names(5) == ["train", "train", "train", "val", "test"]
    assert plan.splits == {"train": ["00", "01", "02"], "val": ["03"], "test": ["04"]}
    assert all(not s.episodes for s in plan.sequences if s.split == "train")
    cfg = WorldConfig.from_dict({"anomalies": {"train_rate": 0.5}})
    plan = plan_dataset(cfg, sequences=1, frames=10, seed=3, split="train")
    assert plan.sequences[0].episodes


def test_plan_is_deterministic():
    def summary(p):
        return [(s.weather, s.speed, len(s.items), [(e.start, e.stop, [(a.name, round(a.x, 6)) for a in e.anomalies])
                                                    for e in s.episodes]) for s in p.sequences]

    a = plan_dataset(sequences=2, frames=12, seed=5, split="test")
    b = plan_dataset(sequences=2, frames=12, seed=5, split="test")
    c = plan_dataset(sequences=2, frames=12, seed=6, split="test")
    assert summary(a) == summary(b)
    assert summary(a) != summary(c)


def test_bad_knobs_are_named():
    with pytest.raises(ValueError, match="unknown weather"):
        plan_dataset(sequences=1, frames=1, weathers=["snow"])
    with pytest.raises(ValueError, match="unknown keys"):
        WorldConfig.from_dict({"anomalies": {"sise": 1}})
    with pytest.raises(ValueError, match="anomaly rates"):
        WorldConfig.from_dict({"anomalies": {"rate": 1.5}})


def test_shipped_world_yaml_lists_the_defaults():
    """config/world.yaml (the file `synth --help` points to) is WorldConfig's defaults, knob for knob."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "config" / "world.yaml"
    assert WorldConfig.from_yaml(path).to_dict() == WorldConfig().to_dict()
