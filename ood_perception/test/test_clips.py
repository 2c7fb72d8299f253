"""Synthetic action clips, the clip readers and the optical-flow cache (issue 3 item 4, issue 8)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ood_perception.data import clips as dclips
from ood_perception.data.clips import (
    FlowCache,
    SyntheticClipDataset,
    VideoFolderDataset,
    compute_flow,
    stack_dataset,
)
from ood_perception.world.clips import (
    FAR_OOD_CLASSES,
    ID_CLASSES,
    NEAR_OOD_CLASSES,
    ClipConfig,
    ClipDatasetSpec,
    all_motions,
    clip_rng,
    render_clip,
    write_clip_dataset,
)

SMALL = ClipConfig(frames=6, size=32)
SPEC = ClipDatasetSpec(train_per_class=2, test_per_class=1, near_per_class=1, far_per_class=1)


def test_every_motion_renders_with_the_right_label():
    for m in all_motions():
        c = render_clip(m, clip_rng(0, "t", 0), SMALL)
        assert c.frames.shape == (6, 32, 32, 3) and c.frames.dtype == np.uint8
        assert c.label == (ID_CLASSES.index(m) if m in ID_CLASSES else -1)
    assert not set(NEAR_OOD_CLASSES) & set(ID_CLASSES) and not set(FAR_OOD_CLASSES) & set(ID_CLASSES)
    with pytest.raises(ValueError, match="unknown motion"):
        render_clip("moonwalk", clip_rng(0, "t", 0), SMALL)


def test_motion_moves_pixels():
    # a walking agent changes the frames far more than the sensor noise of a standing one
    def change(m):
        f = render_clip(m, clip_rng(1, "t", 0), ClipConfig(frames=8, size=48, noise_sigma=0, shake_px=0)).frames
        return np.abs(np.diff(f.astype(int), axis=0)).mean()

    assert change("running") > 3 * change("standing")


def test_writer_is_deterministic_per_seed(tmp_path):
    a = write_clip_dataset(tmp_path / "a", SPEC, seed=3, config=SMALL, progress=False)
    b = write_clip_dataset(tmp_path / "b", SPEC, seed=3, config=SMALL, progress=False)
    c = write_clip_dataset(tmp_path / "c", SPEC, seed=4, config=SMALL, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*.npz"))
    assert len(files) == 7 * 2 + 7 + len(NEAR_OOD_CLASSES) + len(FAR_OOD_CLASSES)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "dataset.yaml").read_bytes() == (b / "dataset.yaml").read_bytes()
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_flow_matches_opencv_and_is_cached_once(tmp_path, monkeypatch):
    root = write_clip_dataset(tmp_path / "d", SPEC, seed=0, config=SMALL, progress=False)
    calls = []
    real = cv2.calcOpticalFlowFarneback

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(dclips.cv2, "calcOpticalFlowFarneback", counting)
    ds = SyntheticClipDataset(root, "train")
    s = ds[0]
    assert len(calls) == SMALL.frames - 1 and ds.cache.computed == 1
    assert s.flow.shape == (5, 2, 32, 32) and s.label == 0 and s.name == "standing"
    # independent computation with OpenCV directly
    g = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in s.frames]
    p = ds.cache.params
    ref = real(g[2], g[3], None, p.pyr_scale, p.levels, p.winsize, p.iterations, p.poly_n, p.poly_sigma, 0)
    np.testing.assert_allclose(s.flow[2].transpose(1, 2, 0), ref, atol=2e-2)  # float16 cache
    # second access, and a fresh reader over the same directory: no new flow
    ds[0]
    ds2 = SyntheticClipDataset(root, "train")
    np.testing.assert_array_equal(ds2[0].flow, s.flow)
    assert len(calls) == SMALL.frames - 1 and ds2.cache.computed == 0
    assert ds.cache.path("train/00000").is_file()
    v, f, y = stack_dataset(ds)
    assert v.shape == (14, 3, 6, 32, 32) and f.shape == (14, 2, 5, 32, 32) and list(y) == [i // 2 for i in range(14)]
    assert -1.0 <= v.min() and v.max() <= 1.0


def test_flow_of_a_translating_square_points_the_right_way():
    frames = np.zeros((3, 48, 48, 3), np.uint8)
    for t in range(3):
        cv2.rectangle(frames[t], (10 + 2 * t, 15), (24 + 2 * t, 30), (255, 255, 255), -1)
    flow = compute_flow(frames)
    inside = flow[:, 0, 17:28, 12:22]
    assert 1.0 < float(np.median(inside)) < 3.0 and abs(float(np.median(flow[:, 1, 17:28, 12:22]))) < 0.5
    with pytest.raises(ValueError, match="T>=2"):
        compute_flow(frames[:1])


def test_cache_rejects_missing_frames(tmp_path):
    with pytest.raises(ValueError, match="not cached"):
        FlowCache(tmp_path).get("x")


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.yaml"):
        SyntheticClipDataset(tmp_path, "train")
    root = write_clip_dataset(tmp_path / "d", SPEC, seed=0, config=SMALL, progress=False)
    with pytest.raises(ValueError, match="no split 'val'"):
        SyntheticClipDataset(root, "val")


def _write_video(path, frames):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (frames.shape[2], frames.shape[1]))
    assert w.isOpened()
    for f in frames:
        w.write(np.ascontiguousarray(f[..., ::-1]))
    w.release()


def test_video_folder_dataset(tmp_path):
    root = tmp_path / "videos"
    for name in ["running", "waving"]:
        (root / name).mkdir(parents=True)
        for k in range(2):
            clip = render_clip(name, clip_rng(0, name, k), ClipConfig(frames=12, size=48))
            _write_video(root / name / f"v{k}.avi", clip.frames)
    ds = VideoFolderDataset(root, clip_len=6, size=32, cache_dir=tmp_path / "cache")
    assert ds.class_names == ["running", "waving"] and len(ds) == 4
    s = ds[3]
    assert s.label == 1 and s.frames.shape == (6, 32, 32, 3) and s.flow.shape == (5, 2, 32, 32)
    assert ds.cache.computed == 1
    ds2 = VideoFolderDataset(root, clip_len=6, size=32, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds2[3].frames, s.frames)
    assert ds2.cache.computed == 0
    ood = VideoFolderDataset(root, clip_len=6, size=32, ood=True, cache_dir=tmp_path / "cache")
    assert {ood[i].label for i in range(len(ood))} == {-1}
    with pytest.raises(ValueError, match="no videos"):
        (tmp_path / "empty" / "a").mkdir(parents=True)
        VideoFolderDataset(tmp_path / "empty")


def test_video_stream_clips_are_the_clips_the_node_cuts(tmp_path):
    """data.clips.video_stream_clips (the distillation table's real far-OOD split) cuts a video file
    into exactly the clips pipeline.recognition.ClipBuffer emits when the node gets its frames."""

    from ood_perception.data.clips import stack_video_streams, video_stream_clips
    from ood_perception.pipeline.recognition import ClipBuffer

    path = tmp_path / "moving.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 72))
    for i in range(37):
        img = np.full((72, 96, 3), 40, np.uint8)
        cv2.rectangle(img, (2 * i, 20), (2 * i + 15, 45), (0, 200, 255), -1)
        w.write(img)
    w.release()
    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    assert len(frames) == 37
    buf = ClipBuffer(clip_len=16, stride=8, size=32)
    expected = [c for c in (buf.push(f, 0.1 * i) for i, f in enumerate(frames)) if c is not None]
    got = video_stream_clips(path, clip_len=16, size=32, stride=8)
    assert got.shape == (len(expected), 16, 32, 32, 3) == (3, 16, 32, 32, 3)  # frames 16, 24, 32
    for g, (clip, _) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, clip)
    assert video_stream_clips(path, clip_len=16, size=32, stride=8, max_frames=15).shape[0] == 0
    video, flow, labels = stack_video_streams([path, path], clip_len=16, size=32, stride=8)
    assert video.shape == (6, 3, 16, 32, 32) and flow.shape == (6, 2, 15, 32, 32) and (labels == -1).all()
    assert flow[0].std() > 0  # the rectangle moves
    with pytest.raises(ValueError, match="cannot open"):
        video_stream_clips(tmp_path / "missing.avi")
