"""TensorRT backend: the pure parts (cache key/paths, parity comparison) everywhere; engines only
where the TensorRT Python API and a CUDA device exist."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from runtime_helpers import tiny_checkpoint, tiny_inputs

from ood_perception import runtime
from ood_perception.runtime.tensorrt_backend import (
    atomic_write_bytes,
    compare_outputs,
    default_cache_dir,
    engine_cache_key,
    engine_cache_path,
    inputs_digest,
)

SHA = "ab" * 32


def test_cache_key_changes_with_every_component():
    base = engine_cache_key(SHA, "10.3.0", "NVIDIA H100", "fp16")
    assert base == engine_cache_key(SHA.upper(), "10.3.0", "NVIDIA H100", "fp16")  # hex case-insensitive
    variants = [
        engine_cache_key("cd" * 32, "10.3.0", "NVIDIA H100", "fp16"),
        engine_cache_key(SHA, "10.4.0", "NVIDIA H100", "fp16"),
        engine_cache_key(SHA, "10.3.0", "Orin", "fp16"),
        engine_cache_key(SHA, "10.3.0", "NVIDIA H100", "fp32"),
        engine_cache_key(SHA, "10.3.0", "NVIDIA H100", "fp16", profile=(1, 1, 8)),
    ]
    assert len({base, *variants}) == 6
    # calibration data only matters for INT8
    assert engine_cache_key(SHA, "10", "g", "fp16", calibration_sha256="x") == engine_cache_key(SHA, "10", "g", "fp16")
    assert engine_cache_key(SHA, "10", "g", "int8", calibration_sha256="x") != engine_cache_key(
        SHA, "10", "g", "int8", calibration_sha256="y")
    with pytest.raises(ValueError, match="precision"):
        engine_cache_key(SHA, "10", "g", "bf16")
    with pytest.raises(ValueError, match="non-empty"):
        engine_cache_key(SHA, "", "g", "fp16")


def test_cache_paths(tmp_path, monkeypatch):
    key = engine_cache_key(SHA, "10.3.0", "NVIDIA H100", "int8")
    p = engine_cache_path(tmp_path, key, SHA, "int8")
    assert p.parent == tmp_path and p.name == f"{SHA[:12]}-int8-{key[:16]}.engine"
    monkeypatch.setenv("OOD_PERCEPTION_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "tensorrt"
    monkeypatch.delenv("OOD_PERCEPTION_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "ood_perception", "tensorrt")
    atomic_write_bytes(tmp_path / "sub" / "e.engine", b"abc")
    assert (tmp_path / "sub" / "e.engine").read_bytes() == b"abc"
    assert [q.name for q in (tmp_path / "sub").iterdir()] == ["e.engine"]  # no temp file left


def test_inputs_digest():
    x = tiny_inputs(batch=1)
    y = {k: v.copy() for k, v in x.items()}
    assert inputs_digest([x]) == inputs_digest([y])
    y["lidar"][0, 0, 0, 0] += 1
    assert inputs_digest([x]) != inputs_digest([y])


def _outs(rng, n=2):
    return [{"class_map": rng.integers(0, 4, (1, 8, 8)), "score_map": rng.normal(size=(1, 8, 8)).astype(np.float32)}
            for _ in range(n)]


def test_compare_outputs_accepts_small_differences():
    rng = np.random.default_rng(0)
    ref = _outs(rng)
    cand = [{"class_map": r["class_map"].copy(), "score_map": r["score_map"] + np.float32(0.01)} for r in ref]
    rep = compare_outputs(ref, cand, atol=0.05, rtol=0.0, threshold=0.5)
    assert rep.ok and not rep.failures
    assert rep.outputs["score_map"]["max_abs_diff"] == pytest.approx(0.01, abs=1e-6)
    assert rep.outputs["class_map"]["agreement"] == 1.0
    # independent mask agreement: pixels on the same side of 0.5
    r = np.concatenate([o["score_map"].ravel() for o in ref])
    c = r + np.float32(0.01)
    assert rep.outputs["score_map"]["mask_agreement"] == pytest.approx(np.mean((r > 0.5) == (c > 0.5)))


def test_compare_outputs_refuses_drift_flips_and_nans():
    rng = np.random.default_rng(1)
    ref = _outs(rng)
    drift = [{"class_map": r["class_map"], "score_map": r["score_map"] * 1.5} for r in ref]
    rep = compare_outputs(ref, drift, atol=0.05, rtol=0.01)
    assert not rep.ok and "score_map" in rep.failures[0]
    flips = [{"class_map": (r["class_map"] + 1) % 4, "score_map": r["score_map"]} for r in ref]
    rep = compare_outputs(ref, flips)
    assert not rep.ok and rep.outputs["class_map"]["agreement"] == 0.0
    nan = [{"class_map": r["class_map"], "score_map": np.full_like(r["score_map"], np.nan)} for r in ref]
    assert not compare_outputs(ref, nan).ok
    shifted = [{"class_map": r["class_map"], "score_map": r["score_map"] + np.float32(0.04)} for r in ref]
    rep = compare_outputs(ref, shifted, atol=0.05, threshold=0.0, mask_agreement=0.9999)
    flipped_share = 1 - rep.outputs["score_map"]["mask_agreement"]
    assert rep.ok == (flipped_share <= 1e-4)
    with pytest.raises(ValueError, match="same non-zero number"):
        compare_outputs(ref, ref[:1])
    bad_shape = [{"class_map": r["class_map"][:, :4], "score_map": r["score_map"]} for r in ref]
    assert "shapes differ" in compare_outputs(ref, bad_shape).failures[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from ood_perception.trainer.export import export_segmentation

    d = tmp_path_factory.mktemp("trt")
    export_segmentation(tiny_checkpoint(d / "c.pt"), d / "model")
    return d / "model"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_load_without_tensorrt_says_so(model_dir):
    # the same reason whatever the device: without TensorRT no device setting helps (run and replay agree)
    for device in ("cuda", "cpu"):
        with pytest.raises(runtime.BackendUnavailableError, match="needs the TensorRT Python package"):
            runtime.load(model_dir, backend="tensorrt", device=device)


@pytest.fixture
def trt_env():
    trt = pytest.importorskip("tensorrt", reason="TensorRT Python API not installed (NVIDIA GPU machines only)")
    if not hasattr(trt, "Builder"):
        pytest.skip("the installed tensorrt package is a stub without bindings")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA device")
    return trt


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_fp32_engine_matches_onnxruntime_and_is_cached(trt_env, model_dir, tmp_path):
    x = tiny_inputs(batch=2)
    ref = runtime.load(model_dir, intra_op_threads=1).infer(x)
    b = runtime.load(model_dir, backend="tensorrt", device="cuda", precision="fp32", cache_dir=tmp_path)
    assert b.rebuilt and b.engine_path.is_file()
    out = b.infer(x)
    np.testing.assert_allclose(out["score_map"], ref["score_map"], atol=1e-3)
    assert np.mean(out["class_map"] != ref["class_map"]) < 1e-3
    again = runtime.load(model_dir, backend="tensorrt", device="cuda", precision="fp32", cache_dir=tmp_path)
    assert not again.rebuilt
    b.engine_path.write_bytes(b"truncated engine")  # corrupt cache -> rebuilt, not an error
    third = runtime.load(model_dir, backend="tensorrt", device="cuda", precision="fp32", cache_dir=tmp_path)
    assert third.rebuilt and third.engine_path.stat().st_size > 100


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_fp16_engine_parity_checked(trt_env, model_dir, tmp_path):
    calib = [tiny_inputs(batch=1, seed=s) for s in range(3)]
    b = runtime.load(model_dir, backend="tensorrt", device="cuda", precision="fp16", cache_dir=tmp_path,
                     calibration_inputs=calib, parity_atol=0.1)
    assert b.parity is not None and b.parity.ok
    with pytest.raises(runtime.ParityError, match="refused"):
        runtime.load(model_dir, backend="tensorrt", device="cuda", precision="fp16", cache_dir=tmp_path / "x",
                     calibration_inputs=calib, parity_atol=0.0, parity_rtol=0.0)
    with pytest.raises(ValueError, match="calibration_inputs"):
        runtime.load(model_dir, backend="tensorrt", device="cuda", precision="fp16", cache_dir=tmp_path)


def test_compare_outputs_judges_the_embedding_by_direction():
    """FP16 noise in the encoder features (the object bank's input) passes; a changed feature does not."""
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(1, 472, 4, 8)).astype(np.float32) * 3
    ref = [{"embedding": emb}]
    fp16 = [{"embedding": emb.astype(np.float16).astype(np.float32) + np.float32(0.02)}]
    rep = compare_outputs(ref, fp16, atol=0.001, rtol=0.0)  # elementwise it would fail
    assert rep.ok and rep.outputs["embedding"]["min_cosine"] > 0.99
    broken = emb.copy()
    broken[0, :, 1, 2] = rng.normal(size=472)  # one cell's features replaced
    rep = compare_outputs(ref, [{"embedding": broken}])
    assert not rep.ok and "embedding" in rep.failures[0] and rep.outputs["embedding"]["min_cosine"] < 0.5
