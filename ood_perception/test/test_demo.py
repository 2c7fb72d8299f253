"""The demo command: without a model it stops with one clear line (never fake results); ``--quick``
writes the report with every section, its recognition rows equal to an independent recogniser's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_demo_without_model_fails_with_one_line(tmp_path):
    env = {**os.environ, "OOD_PERCEPTION_MODEL": str(tmp_path / "no_model")}
    p = subprocess.run([sys.executable, "-m", "ood_perception.cli", "demo", "--quick", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no usable model at" in lines[0] and str(tmp_path / "no_model") in lines[0]
    assert not (tmp_path / "out" / "report.html").exists()


def test_vtest_path_is_debian_opencv_doc():
    from ood_perception.app.demo import VTEST_AVI

    assert str(VTEST_AVI) == "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


@pytest.mark.slow  # ~20-25 s on 2 shared cores: synth 8 frames, replay, live node, recognition node
@pytest.mark.ros
def test_quick_demo_writes_the_report_with_every_section(tmp_path):
    """`demo --quick` end to end (synth, replay, the fusion node over rclpy, recognition): the report
    holds segmentation metrics, alerts, live-vs-replay and recognition results; recognition.json's
    rows are checked against an independent ClipRecognizer on re-rendered clips."""
    import json
    import re

    import cv2
    import numpy as np

    pytest.importorskip("rclpy", reason="rclpy is installed by `make setup`")
    from ood_perception import runtime
    from ood_perception.app.demo import DEMO_CLIP_SPLIT, QUICK, VTEST_AVI, demo_motions
    from ood_perception.pipeline.recognition import ClipRecognizer
    from ood_perception.world.clips import ClipConfig, clip_rng, render_clip

    env = {k: v for k, v in os.environ.items() if k not in (runtime.MODEL_ENV, runtime.RECOGNITION_MODEL_ENV)}
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "ood_perception.cli", "demo", "--quick", "--out", str(out), "--seed", "3"],
                       capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    report = out / "report.html"
    assert f"report: {report.resolve()}" in p.stdout
    text = report.read_text(encoding="utf-8")
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    for h in ("Metrics", "Alerts", "Live vs replay", "Action recognition"):
        assert h in headings, headings
    assert "pixel AUROC" in text and "closed-set mIoU" in text  # the drive has labels: segmentation metrics shown
    overlays = sorted(out.glob("overlay_*.png"))
    assert overlays and all(cv2.imread(str(o)) is not None for o in overlays)

    # segmentation metrics: the report's replay metrics.json, labelled frames = the drive's frames
    metrics = json.loads((out / "replay" / "metrics.json").read_text())
    assert metrics["metrics"]["frames_with_labels"] == QUICK.frames
    rec = json.loads((out / "recognition.json").read_text())
    live = rec["live_vs_replay"]
    assert live["frames"] == QUICK.frames and live["same_level"] == QUICK.frames
    assert live["masks_identical"] == live["masks_compared"] > 0

    # recognition: every world motion once, in demo_motions order; results equal an independent recogniser's
    motions = demo_motions(QUICK)
    assert [(r["truth"], r["group"]) for r in rec["world"]] == motions
    ref = ClipRecognizer.from_model_dir(runtime.default_recognition_model_dir())
    cfg = ClipConfig(frames=ref.buffer.clip_len, size=ref.buffer.size)
    for i in (0, len(motions) - 1):
        exp = ref.process_clip(render_clip(motions[i][0], clip_rng(3, DEMO_CLIP_SPLIT, i), cfg).frames)
        row = rec["world"][i]
        assert row["class_name"] == exp.class_name and row["is_ood"] == exp.is_ood
        assert row["ood_score"] == pytest.approx(exp.ood_score, abs=1e-5)
    ids = [r for r in rec["world"] if r["group"] == "ID"]
    assert rec["world_summary"]["ID accuracy"] == pytest.approx(np.mean([r["class_name"] == r["truth"] for r in ids]))
    for r in rec["world"]:
        assert r["is_ood"] == (r["ood_score"] > r["threshold"])
    if VTEST_AVI.exists():
        clips = rec["video"]["clips"]
        assert len(clips) == (QUICK.video_frames - ref.buffer.clip_len) // QUICK.video_stride + 1
        assert all(c["reference_agrees"] for c in clips) and rec["video"]["info"]["clips"] == len(clips)
        assert "through the recognition node's frame processor" in text
    else:
        assert rec["video"]["clips"] == [] and "opencv-doc" in rec["video"]["note"]
