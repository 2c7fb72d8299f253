"""The one recognition export (``ood-perception export`` of a recognition checkpoint) end to end:
train a tiny model with ``ood-perception train recognition`` on generated clips, export it with
calibration and held-out evaluation, and check that ``ClipRecognizer`` over
``runtime.load(model_dir)`` (ONNX Runtime and torch) gives the same ``RecognitionResult`` as the
pipeline over the torch checkpoint, and that ``model.json`` records what the node needs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ood_perception import runtime
from ood_perception.cli import main as cli_main
from ood_perception.models.spec import sha256_file
from ood_perception.pipeline.recognition import ClipRecognizer, RecognitionPipeline
from ood_perception.world.clips import ClipConfig, clip_rng, render_clip

FIELDS_EXACT = ("class_id", "class_name", "is_ood", "score_name", "modality_names", "modality_classes", "num_frames")
FIELDS_CLOSE = ("confidence", "ood_score", "threshold", "stamp_start", "stamp_end")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint, clip dataset, model dir) of a 1-epoch model on 2 clips per class (6 frames of 32 px)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("rec_export")
    assert cli_main(["train", "recognition", "--data", str(tmp / "clips"), "--out", str(tmp / "m.pt"), "--epochs", "2",
                     "--clips-per-class", "3", "--clip-len", "6", "--size", "32", "--embed-dim", "8",
                     "--width", "4", "--batch-size", "8", "--threads", "1", "--seed", "1"]) == 0
    assert cli_main(["export", str(tmp / "m.pt"), "--out", str(tmp / "dir"), "--calib-data", str(tmp / "clips"),
                     "--calib-split", "test", "--eval-data", str(tmp / "clips")]) == 0
    return tmp / "m.pt", tmp / "clips", tmp / "dir"


def _assert_same(a, b, atol=1e-4):
    for name in FIELDS_EXACT:
        assert getattr(a, name) == getattr(b, name), name
    for name in FIELDS_CLOSE:
        assert getattr(a, name) == pytest.approx(getattr(b, name), abs=atol), name
    assert len(a.modality_scores) == 2 and a.modality_scores == pytest.approx(b.modality_scores, abs=atol)


def test_model_json_records_what_the_recognizer_needs(trained):
    ckpt_path, _, model_dir = trained
    ck = torch.load(ckpt_path, weights_only=True)
    spec = runtime.load_spec(model_dir)
    assert spec.kind == "recognition" and spec.class_names == ck["class_names"]
    assert spec.extra["clip_len"] == 6 and spec.input_size == [32, 32]
    assert spec.input("video").shape == ("batch", 3, 6, 32, 32) and spec.input("flow").shape == ("batch", 2, 5, 32, 32)
    assert spec.output_names == ["class", "confidence", "score", "video_class", "video_score", "flow_class", "flow_score"]
    assert spec.extra["flow_params"] == ck["flow_params"] and spec.extra["flow_scale"] == 4.0
    assert set(spec.extra["normalisation"]) == {"video", "flow"} and spec.mean == [0.5] * 3
    assert spec.score_name == "msp" and spec.calibration["split"] == "test" and spec.calibration["tpr"] == 0.95
    # threshold at 95% TPR on the ID calibration clips = the trainer's (independent) threshold on the same clips
    assert spec.threshold == pytest.approx(ck["metrics"]["threshold"]["value"], abs=1e-5)
    prov = spec.provenance
    assert prov["checkpoint"]["sha256"] == sha256_file(ckpt_path) and prov["train"]["seed"] == 1
    ev = prov["evaluation"]
    # held-out metrics of the exported wrapper equal the trainer's evaluation of the checkpoint (same MSP)
    assert ev["accuracy"]["joint"] == pytest.approx(ck["metrics"]["acc_joint"], abs=1e-6)
    assert ev["accuracy"]["video"] == pytest.approx(ck["metrics"]["acc_video"], abs=1e-6)
    for split in ("near_ood", "far_ood"):
        assert ev["ood"][split]["auroc"] == pytest.approx(ck["metrics"][split]["auroc"], abs=1e-6)
        assert ev["ood"][split]["fpr95"] == pytest.approx(ck["metrics"][split]["fpr95"], abs=1e-6)
        assert 0.0 <= ev["ood"][split]["flagged"] <= 1.0
    assert ev["id_flagged"] <= 0.05 + 1e-9  # calibrated on these very clips: at most 5% flagged


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_recognizer_from_model_dir_matches_the_checkpoint(trained, backend):
    ckpt_path, _, model_dir = trained
    reference = RecognitionPipeline.from_checkpoint(ckpt_path, stride=3)
    rec = ClipRecognizer(runtime.load(model_dir, backend=backend), stride=3)
    assert rec.buffer.clip_len == 6 and rec.buffer.size == 32 and rec.class_names == reference.class_names
    n = 0
    for motion, seed in (("walking", 0), ("falling", 1), ("waving", 2)):
        # frames at 48 px: both resize them to the model's 32 px the same way
        frames = render_clip(motion, clip_rng(seed, "parity", 0), ClipConfig(frames=9, size=48)).frames
        for i, f in enumerate(frames):
            stamp = 100.0 * seed + 0.1 * i
            a, b = rec.push(f, stamp), reference.push(f, stamp)
            assert (a is None) == (b is None)
            if a is not None:
                _assert_same(a, b)
                assert all(math.isfinite(s) for s in a.modality_scores)
                n += 1
    assert n >= 6
    assert ClipRecognizer.from_model_dir(model_dir, backend=backend).threshold == pytest.approx(reference.threshold, abs=1e-5)


def test_recognizer_refuses_segmentation_models_and_bad_geometry(trained, tmp_path, capsys):
    _, _, model_dir = trained
    with pytest.raises(ValueError, match="clip_len 6"):
        ClipRecognizer(runtime.load(model_dir), clip_length=16)
    with pytest.raises(ValueError, match="frame size 32"):
        ClipRecognizer(runtime.load(model_dir), size=64)
    seg = runtime.default_model_dir()
    if (seg / "model.json").is_file():
        with pytest.raises(ValueError, match="segmentation"):
            ClipRecognizer(runtime.load(seg))
    assert cli_main(["export", str(trained[0]), "--out", str(tmp_path / "x"), "--calib-data", str(tmp_path / "nope")]) == 1
    assert "calibration data not found" in capsys.readouterr().err
    assert cli_main(["export", str(trained[0]), "--out", str(tmp_path / "x"), "--calib-data", str(trained[1]),
                     "--calib-split", "near_ood"]) == 1
    assert "split 'near_ood' holds OOD clips" in capsys.readouterr().err
    assert cli_main(["export", str(trained[0]), "--out", str(tmp_path / "x"), "--calib-data", str(trained[1]),
                     "--calib-split", "val"]) == 1
    assert "has no split 'val'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_clip_stream_frames_are_scored_like_independent_arrays(trained):
    """The recogniser's result on a streamed clip equals the exported graph on the clip's arrays
    computed independently (resize + Farneback flow + normalisation)."""
    import cv2

    from ood_perception.data.clips import FlowParams, compute_flow

    _, _, model_dir = trained
    backend = runtime.load(model_dir)
    spec = backend.spec
    rec = ClipRecognizer(backend, stride=6)
    frames = render_clip("running", clip_rng(3, "x", 0), ClipConfig(frames=6, size=40)).frames
    res = [rec.push(f, float(i + 1)) for i, f in enumerate(frames)][-1]
    small = np.stack([cv2.resize(f, (32, 32), interpolation=cv2.INTER_AREA) for f in frames])
    video = (small.astype(np.float32) / 127.5 - 1.0).transpose(3, 0, 1, 2)[None]
    flow = (compute_flow(small, FlowParams(**spec.extra["flow_params"])) / 4.0).transpose(1, 0, 2, 3)[None]
    out = backend.infer({"video": video, "flow": flow.astype(np.float32)})
    assert res.class_id == int(out["class"][0]) and res.ood_score == pytest.approx(float(out["score"][0]), abs=1e-6)
    assert res.confidence == pytest.approx(float(out["confidence"][0]), abs=1e-6)
    assert res.modality_scores == pytest.approx([float(out["video_score"][0]), float(out["flow_score"][0])], abs=1e-6)
    assert res.is_ood == (float(out["score"][0]) > spec.threshold)
