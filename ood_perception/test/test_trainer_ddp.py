"""DDP: two CPU processes (gloo) started with torchrun train one model with sharded data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ood_perception.trainer.toy import make_toy_dataset


@pytest.mark.slow
def test_torchrun_two_processes_stay_in_sync(tmp_path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun not installed next to python")
    root = make_toy_dataset(tmp_path / "data", {"00": 6, "01": 2})
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "ood_perception.cli", "train", "segmentation",
           "--data", str(root), "--out", str(out), "--backbone", "tiny", "--input-size", "32", "64", "--epochs", "2",
           "--batch-size", "2", "--cache-dir", str(tmp_path / "cache"), "--quiet", "--device", "cpu",
           "--set", "model.lidar_width=8", "--set", "model.camera_channels=16", "--set", "model.lidar_channels=16",
           "--set", "model.head_channels=16", "--set", "model.tiny_width=8"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["samples_per_rank_per_epoch"] == 3
    assert summary["steps"] == 4  # 2 epochs x ceil(3 / 2) steps on each rank
    assert summary["ddp_in_sync"] is True
    assert (out / "model.pt").is_file()
    assert proc.stdout.count("trained 4 steps") == 1  # only rank 0 reports/writes
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
