"""Recognition network, its trainer/CLI and the recognition pipeline (issue 8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_perception import cli
from ood_perception.models.recognition import (
    RecognitionConfig,
    build_recognition_model,
    load_recognition_checkpoint,
)
from ood_perception.pipeline.recognition import ClipBuffer, ClipRecognizer, RecognitionPipeline
from ood_perception.trainer import recognition as tr
from ood_perception.world.clips import ClipConfig, clip_rng, render_clip

TINY = RecognitionConfig(num_classes=3, embed_dim=8, width=4)


def test_forward_shapes_and_input_checks():
    m = build_recognition_model(TINY).eval()
    out = m(torch.randn(2, 3, 6, 32, 32), torch.randn(2, 2, 5, 32, 32))
    assert out["logits"].shape == (2, 3) and out["features"].shape == (2, 16)
    assert out["video_logits"].shape == out["flow_logits"].shape == (2, 3)
    torch.testing.assert_close(out["features"], torch.cat([out["video_features"], out["flow_features"]], 1))
    # joint head is linear on the features (what feature-based scorers assume)
    torch.testing.assert_close(out["logits"], m.joint_head(out["features"]))
    assert (out["features"] >= 0).all()
    with pytest.raises(ValueError, match=r"\[B, 2, T, H, W\]"):
        m(torch.randn(2, 3, 6, 32, 32), torch.randn(2, 3, 5, 32, 32))
    with pytest.raises(ValueError, match="unknown recognition config keys"):
        build_recognition_model({"num_classes": 3, "depth": 5})


def _toy(n=12, seed=0):
    """Clips whose class is the brightness of a blob and the mean flow, so a few epochs learn them."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 3
    v = g.normal(0, 0.1, (n, 3, 4, 16, 16)).astype(np.float32)
    v[:, :, :, 4:12, 4:12] += (y[:, None, None, None, None] - 1).astype(np.float32)
    f = g.normal(0, 0.1, (n, 2, 3, 16, 16)).astype(np.float32)
    f[:, 0] += (y[:, None, None, None] - 1).astype(np.float32) * 0.5
    return v, f, y.astype(np.int64)


@pytest.mark.parametrize("fm,a2d", [(False, 0.0), (True, 1.0)])
def test_training_reduces_loss_and_options_add_terms(fm, a2d):
    torch.manual_seed(0)
    m = build_recognition_model(TINY)
    cfg = tr.RecognitionTrainConfig(epochs=5, batch_size=6, lr=5e-3, feature_mixing=fm, fm_channels=2, a2d_weight=a2d)
    hist = tr.train_recognition(m, *_toy(), cfg, progress=False)
    assert hist[-1]["ce_joint"] < hist[0]["ce_joint"]
    assert ("fm_entropy" in hist[0]) == fm and ("a2d" in hist[0]) == (a2d > 0)
    if fm:
        assert -1.0 <= hist[-1]["fm_entropy"] <= 0.0
    with pytest.raises(ValueError, match="training labels"):
        tr.train_recognition(m, *_toy()[:2], np.full(12, 5), cfg, progress=False)


def test_checkpoint_round_trip(tmp_path):
    m = build_recognition_model(TINY).eval()
    p = tr.save_recognition_checkpoint(tmp_path / "m.pt", m, ["a", "b", "c"], {"clip_len": 6, "size": 32})
    m2, ck = load_recognition_checkpoint(p)
    assert ck["class_names"] == ["a", "b", "c"] and ck["task"] == "recognition"
    v, f, _ = _toy(4)
    torch.testing.assert_close(m(torch.from_numpy(v), torch.from_numpy(f))["logits"],
                               m2(torch.from_numpy(v), torch.from_numpy(f))["logits"])
    torch.save({"task": "segmentation"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a recognition checkpoint"):
        load_recognition_checkpoint(tmp_path / "bad.pt")


def test_train_cli_generates_clips_and_writes_checkpoint(tmp_path):
    # through the command line: `train recognition` renders the clip world into an empty --data first
    rc = cli.main(["train", "recognition", "--data", str(tmp_path / "clips"), "--out", str(tmp_path / "m.pt"),
                   "--epochs", "1", "--clips-per-class", "2", "--clip-len", "6", "--size", "32", "--embed-dim", "8",
                   "--width", "4", "--batch-size", "8", "--threads", "1", "--feature-mixing", "--fm-channels", "2"])
    assert rc == 0
    assert (tmp_path / "clips" / "dataset.yaml").is_file()
    assert any((tmp_path / "clips" / "flow_cache").rglob("*.npy"))
    _, ck = load_recognition_checkpoint(tmp_path / "m.pt")
    assert ck["clip_len"] == 6 and ck["size"] == 32 and ck["train"]["config"]["feature_mixing"] is True
    assert {"near_ood", "far_ood", "acc_joint", "threshold"} <= set(ck["metrics"])
    pipe = RecognitionPipeline.from_checkpoint(tmp_path / "m.pt", stride=3)
    assert pipe.buffer.clip_len == 6 and pipe.threshold == ck["metrics"]["threshold"]["value"]


def test_clip_buffer_emission_and_drops():
    b = ClipBuffer(clip_len=4, stride=2, size=16)
    frame = np.zeros((20, 30, 3), np.uint8)
    emitted = [i for i in range(10) if b.push(frame, float(i)) is not None]
    assert emitted == [3, 5, 7, 9]
    assert b.push(frame, 5.0) is None and b.dropped == 1  # stamp going backwards
    b2 = ClipBuffer(clip_len=3, stride=10, size=16)
    out = [b2.push(frame, float(i)) for i in range(3)]
    assert out[-1][0].shape == (3, 16, 16, 3) and list(out[-1][1]) == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="uint8"):
        b.push(frame.astype(np.float32), 20.0)


def test_pipeline_result_matches_the_model_and_onnx(tmp_path):
    torch.manual_seed(0)
    m = build_recognition_model(TINY).eval()
    pipe = RecognitionPipeline(m, ["x", "y", "z"], threshold=0.5, clip_len=6, stride=6, size=32)
    clip = render_clip("walking", clip_rng(0, "p", 0), ClipConfig(frames=6, size=32)).frames
    results = [pipe.push(f, 10.0 + 0.1 * i) for i, f in enumerate(clip)]
    assert results[:5] == [None] * 5
    r = results[5]
    from ood_perception.data.clips import compute_flow, normalise_flow, normalise_frames
    from ood_perception.pipeline.recognition import _TorchBackend

    with torch.no_grad():
        out = m(torch.from_numpy(normalise_frames(clip)[None]), torch.from_numpy(normalise_flow(compute_flow(clip))[None]))
    p = torch.softmax(out["logits"][0], 0)
    assert r.class_id == int(p.argmax()) and r.class_name == "xyz"[r.class_id]
    assert r.confidence == pytest.approx(float(p.max()), abs=1e-5)
    assert r.ood_score == pytest.approx(1 - float(p.max()), abs=1e-5)  # MSP score = 1 - max softmax
    assert r.is_ood == (r.ood_score > 0.5)
    assert r.stamp_start == pytest.approx(10.0) and r.stamp_end == pytest.approx(10.5) and r.num_frames == 6
    assert r.clip_duration == pytest.approx(0.5)
    pv = torch.softmax(out["video_logits"][0], 0)
    assert r.modality_names == ["video", "flow"] and r.score_name == "msp"
    assert r.modality_scores[0] == pytest.approx(1 - float(pv.max()), abs=1e-5)
    # the one recognition export (model dir, scorer inside the graph) through the runtime
    from types import SimpleNamespace

    from ood_perception import runtime
    from ood_perception.trainer.export import export_recognition

    tr.save_recognition_checkpoint(tmp_path / "m.pt", m, ["x", "y", "z"], {"clip_len": 6, "size": 32})
    export_recognition(tmp_path / "m.pt", tmp_path / "dir", calib_clips=(
        np.stack([normalise_frames(clip)] * 2), np.stack([normalise_flow(compute_flow(clip))] * 2)))
    r2 = RecognitionPipeline(str(tmp_path / "dir"), ["x", "y", "z"], threshold=0.5, scorer=None, clip_len=6,
                             size=32).process_clip(clip)
    assert r2.class_id == r.class_id and r2.ood_score == pytest.approx(r.ood_score, abs=1e-4)
    assert r2.confidence == pytest.approx(r.confidence, abs=1e-4) and r2.score_name == "msp"
    assert r2.modality_scores == pytest.approx(r.modality_scores, abs=1e-4) and r2.modality_classes == r.modality_classes
    with pytest.raises(ValueError, match="inside its graph"):
        RecognitionPipeline(str(tmp_path / "dir"), ["x", "y", "z"], threshold=0.5, scorer="energy", clip_len=6, size=32)
    # the node's entry point: geometry, names and threshold from model.json (calibrated on the 2 copies)
    rec = ClipRecognizer(runtime.load(tmp_path / "dir", intra_op_threads=1), stride=6)
    assert rec.buffer.clip_len == 6 and rec.buffer.size == 32 and rec.threshold == pytest.approx(r.ood_score, abs=1e-4)
    out3 = [rec.push(f, float(i)) for i, f in enumerate(clip)]
    assert out3[-1].ood_score == pytest.approx(r.ood_score, abs=1e-4) and out3[-1].class_name == r.class_name
    with pytest.raises(ValueError, match="clip_len 6"):
        ClipRecognizer(runtime.load(tmp_path / "dir", intra_op_threads=1), clip_length=8)
    # a logits-returning runtime-style backend (infer + spec) is scored by the pipeline
    rt = SimpleNamespace(infer=lambda x: _TorchBackend(m)(x["video"], x["flow"]),
                         spec={"class_names": ["x", "y", "z"], "threshold": 0.5, "clip_len": 6, "size": 32})
    rec4 = ClipRecognizer(rt, stride=6)
    out4 = [rec4.push(f, float(i)) for i, f in enumerate(clip)]
    assert out4[-1].ood_score == pytest.approx(r.ood_score, abs=1e-5) and out4[-1].threshold == 0.5
    with pytest.raises(ValueError, match="threshold"):
        ClipRecognizer(SimpleNamespace(infer=rt.infer, spec={"class_names": ["x"]}))


def test_recognition_frame_processor_stamp_rules_clips_and_failures():
    """The node's per-frame decisions without ROS: stamp rules, clock resets, alerts, model failures."""
    from ood_perception.pipeline.alerts import ALERT, CLEAR, DEGRADED, AlertConfig
    from ood_perception.pipeline.recognition import (
        REJECT_DUPLICATE_STAMP,
        REJECT_OLD_STAMP,
        REJECT_ZERO_STAMP,
        RecognitionFrameProcessor,
        RecognitionResult,
    )

    class Every2:
        """A recogniser that completes a clip every second frame; OOD when the stamp is >= 10."""

        def __init__(self):
            self.buffer = ClipBuffer(clip_len=2, stride=2, size=8)
            self.fail = False

        def push(self, frame, stamp):
            if self.fail:
                raise RuntimeError("model exploded")
            if self.buffer.push(frame, stamp) is None:
                return None
            return RecognitionResult(0, "walk", 0.9, float(stamp), stamp >= 10, 9.5, "msp", ["video", "flow"],
                                     [0.0, 0.0], num_frames=2)

    rec = Every2()
    p = RecognitionFrameProcessor(rec, AlertConfig(raise_k=1, raise_n=1, clear_frames=1, cooldown_s=0.0), clock_jump=1.0)
    frame = np.zeros((8, 8, 3), np.uint8)
    assert p.admit(0.0) == (False, REJECT_ZERO_STAMP)
    assert p.admit(1.0) == (False, None) and p.process(frame, 1.0) is None
    assert p.admit(1.0) == (False, REJECT_DUPLICATE_STAMP)
    assert p.admit(0.5) == (False, REJECT_OLD_STAMP)  # behind, but within clock_jump
    assert p.admit(1.1) == (False, None)
    out = p.process(frame, 1.1)
    assert out is not None and out.level == CLEAR and out.modalities == ["video", "flow"] and out.score == 1.1
    assert out.description.startswith("walk: ")
    for t in (10.0, 10.1):
        assert p.admit(t) == (False, None)
        out = p.process(frame, t)
    assert out.level == ALERT and p.alerts.alerting
    assert p.admit(2.0) == (True, None) and p.resets == 1  # 8 s back: a clock reset, the frame is taken
    p.reset()
    assert not p.alerts.alerting and len(rec.buffer.frames) == 0
    rec.fail = True
    out = p.process(frame, 2.0)
    assert out.level == DEGRADED and out.result is None and "model exploded" in out.error
