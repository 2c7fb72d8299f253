"""The demo command: without a model it stops with one clear line (never fake results)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_without_model_fails_with_one_line(tmp_path):
    env = {**os.environ, "OOD_PERCEPTION_MODEL": str(tmp_path / "no_model")}
    p = subprocess.run([sys.executable, "-m", "ood_perception.cli", "demo", "--quick", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no usable model at" in lines[0] and str(tmp_path / "no_model") in lines[0]
    assert not (tmp_path / "out" / "report.html").exists()


def test_vtest_path_is_debian_opencv_doc():
    from ood_perception.replay.demo import VTEST_AVI

    assert str(VTEST_AVI) == "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
