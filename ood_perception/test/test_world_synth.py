"""`ood-perception synth`: determinism, layout, dataset.yaml, bags."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import yaml

from ood_perception.commands import synth
from ood_perception.data import DatasetConfig, SemanticKittiReader
from ood_perception.world import synth as world_synth


def main(argv: list[str]) -> int:
    """Run the synth subcommand as the CLI does (its own parser: no import of every subcommand)."""
    parser = argparse.ArgumentParser(prog="ood-perception")
    synth.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path, monkeypatch):
    args = ["synth", "--sequences", "2", "--frames", "2", "--size", "128x64", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    # two worker processes for these 4 frames (by default a worker needs 20 frames to pay its start-up)
    monkeypatch.setattr(world_synth, "MIN_FRAMES_PER_WORKER", 1)
    assert main([*args, "--out", str(tmp_path / "b"), "--seed", "3", "--workers", "2"]) == 0
    assert main([*args, "--out", str(tmp_path / "c"), "--seed", "4"]) == 0
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert "sequences/00/velodyne/000001.bin" in a and "sequences/01/image_2_label/000000.png" in a
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith((".bin", ".png")))
    # refuses to overwrite without --overwrite (the CLI prints this ValueError and exits with 1)
    with pytest.raises(ValueError, match="already holds a dataset"):
        main([*args, "--out", str(tmp_path / "a"), "--seed", "3"])


def test_fewer_workers_than_asked_are_said(tmp_path, capsys):
    """A dataset too small for the workers asked is rendered with fewer, and the command says so."""
    import json

    assert main(["synth", "--sequences", "2", "--frames", "2", "--size", "64x32", "--quiet", "--workers", "3",
                 "--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["workers"] == 1
    assert "rendered with 1 worker(s) instead of 3" in err and f"per {world_synth.MIN_FRAMES_PER_WORKER} frames" in err


def test_layout_dataset_yaml_and_reader(tmp_path):
    assert main(["synth", "--out", str(tmp_path), "--sequences", "3", "--frames", "2", "--size", "160x80",
                 "--weather", "rain", "--bag", "mcap", "--quiet"]) == 0
    meta = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    assert meta["ood_ids"] == list(range(200, 210))
    assert meta["splits"] == {"train": ["00"], "val": ["01"], "test": ["02"]}
    assert {v["weather"] for v in meta["sequence_info"].values()} == {"rain"}
    cfg = DatasetConfig.from_yaml(tmp_path / "dataset.yaml")
    assert cfg.num_classes == 15 and cfg.class_names[0] == "car" and cfg.class_names[-1] == "sky"
    reader = SemanticKittiReader(tmp_path, sequences="test")
    assert len(reader) == 2 and reader.config.ood_ids == cfg.ood_ids
    f = reader[1]
    assert f.image.shape == (80, 160, 3) and f.pixel_labels.shape == (80, 160)
    assert (f.pixel_labels[0] == 100).any() and not (f.pixel_labels == 0).any()  # no hit = sky, a known class
    assert f.stamp == 0.1 and f.pose[0, 3] > 0.3  # moved forward at >= 5 m/s
    assert np.allclose(f.pose[3], [0, 0, 0, 1])
    for seq in ("00", "01", "02"):
        assert (tmp_path / "bags" / seq / f"{seq}.mcap").is_file()
