"""Runtime: ONNX Runtime vs torch parity, and the documented errors for bad model directories/inputs."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from runtime_helpers import H, W, tiny_checkpoint, tiny_inputs

from ood_perception import runtime
from ood_perception.models.spec import sha256_file
from ood_perception.trainer.export import export_segmentation

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rt")
    export_segmentation(tiny_checkpoint(d / "c.pt"), d / "model")
    return d / "model"


@pytest.fixture
def copy(model_dir, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(model_dir, dst)
    return dst


def _rewrite_spec(d, **changes):
    data = json.loads((d / "model.json").read_text())
    data.update(changes)
    (d / "model.json").write_text(json.dumps(data))
    return data


def assert_parity(a: dict, b: dict, atol: float = 1e-4) -> None:
    """Score maps within ``atol``; class maps equal except where the scores say it's a tie is not
    observable here, so allow at most 0.1% of pixels to differ."""
    for name in a:
        if "score" in name:
            np.testing.assert_allclose(a[name], b[name], atol=atol, rtol=0, err_msg=name)
        else:
            assert np.mean(a[name] != b[name]) <= 1e-3, name


def test_onnxruntime_and_torch_agree(model_dir):
    x = tiny_inputs(batch=2)
    ort_out = runtime.load(model_dir, intra_op_threads=1).infer(x)
    torch_out = runtime.load(model_dir, backend="torch").infer(x)
    assert list(ort_out) == list(torch_out) == [t.name for t in runtime.load_spec(model_dir).outputs]
    assert_parity(ort_out, torch_out)
    for name, arr in torch_out.items():
        assert arr.dtype == ort_out[name].dtype and arr.shape[1:] == (H, W)


def test_describe_and_spec(model_dir):
    b = runtime.load(model_dir, intra_op_threads=1)
    d = b.describe()
    assert d["backend"] == "onnxruntime" and d["providers"] == ["CPUExecutionProvider"]
    assert d["onnx_sha256"] == sha256_file(model_dir / "model.onnx") and d["classes"] == 4
    assert b.spec.image_hw == (H, W) and b.spec.num_classes == 4
    assert runtime.load(model_dir, backend="torch").describe()["precision"] == "fp32"


def test_default_model_dir_env_override(monkeypatch, model_dir):
    monkeypatch.delenv(runtime.MODEL_ENV, raising=False)
    assert runtime.default_model_dir().name == "default_model"
    assert runtime.default_model_dir().parent.name == "assets"
    monkeypatch.setenv(runtime.MODEL_ENV, str(model_dir))
    assert runtime.load(intra_op_threads=1).model_dir == model_dir


def test_missing_model_errors(tmp_path, copy):
    with pytest.raises(runtime.ModelNotFoundError, match="model directory does not exist"):
        runtime.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(runtime.ModelNotFoundError, match=r"empty/model.json: no model.json"):
        runtime.load(tmp_path / "empty")
    (copy / "model.onnx").unlink()
    with pytest.raises(runtime.ModelNotFoundError, match=r"model.onnx: onnx file listed in model.json does not exist"):
        runtime.load(copy)
    (copy / "model.pt").unlink()
    with pytest.raises(runtime.ModelNotFoundError, match="model.pt"):
        runtime.load(copy, backend="torch")
    assert issubclass(runtime.ModelNotFoundError, FileNotFoundError)


def test_corrupt_files_are_refused_by_sha256(copy):
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(runtime.ModelCorruptError, match=r"model.onnx: sha256 .* does not match"):
        runtime.load(copy)
    (copy / "model.pt").write_bytes(b"garbage")
    with pytest.raises(runtime.ModelCorruptError, match=r"model.pt: sha256"):
        runtime.load(copy, backend="torch")


def test_unreadable_files_with_matching_sha_are_corrupt(copy):
    (copy / "model.onnx").write_bytes(b"not an onnx graph")
    (copy / "model.pt").write_bytes(b"not a torch file")
    files = {"onnx": {"path": "model.onnx", "sha256": sha256_file(copy / "model.onnx")},
             "torch": {"path": "model.pt", "sha256": sha256_file(copy / "model.pt")}}
    _rewrite_spec(copy, files=files)
    with pytest.raises(runtime.ModelCorruptError, match="ONNX Runtime cannot load"):
        runtime.load(copy)
    with pytest.raises(runtime.ModelCorruptError, match="weights_only=True"):
        runtime.load(copy, backend="torch")


def test_corrupt_model_json(copy):
    (copy / "model.json").write_text("{ not json")
    with pytest.raises(runtime.ModelCorruptError, match="model.json: not valid JSON"):
        runtime.load(copy)
    (copy / "model.json").write_text(json.dumps({"format_version": 1, "kind": "segmentation"}))
    with pytest.raises(runtime.ModelCorruptError, match="missing field"):
        runtime.load(copy)


def test_mismatched_models(copy, model_dir):
    _rewrite_spec(copy, format_version=99)
    with pytest.raises(runtime.ModelMismatchError, match="format_version 99 is not supported"):
        runtime.load(copy)
    shutil.copy(model_dir / "model.json", copy / "model.json")
    _rewrite_spec(copy, kind="tracking")
    with pytest.raises(runtime.ModelMismatchError, match="unknown model kind"):
        runtime.load(copy)
    # graph and model.json disagree on an input's size
    data = json.loads((model_dir / "model.json").read_text())
    data["inputs"][0]["shape"] = ["batch", 3, H * 2, W]
    (copy / "model.json").write_text(json.dumps(data))
    with pytest.raises(runtime.ModelMismatchError, match="graph input 'image' has shape"):
        runtime.load(copy)
    # torch weights of a different model (5 classes) under a valid sha256
    other = copy.parent / "other"
    export_segmentation(tiny_checkpoint(copy.parent / "c5.pt", num_classes=5), other)
    shutil.copy(model_dir / "model.json", copy / "model.json")
    shutil.copy(other / "model.pt", copy / "model.pt")
    data = json.loads((model_dir / "model.json").read_text())
    data["files"]["torch"]["sha256"] = sha256_file(copy / "model.pt")
    payload = torch.load(io.BytesIO((copy / "model.pt").read_bytes()), weights_only=True)
    payload["model_config"]["num_classes"] = 4  # config says 4 classes, weights hold 5
    buf = io.BytesIO()
    torch.save(payload, buf)
    (copy / "model.pt").write_bytes(buf.getvalue())
    data["files"]["torch"]["sha256"] = sha256_file(copy / "model.pt")
    (copy / "model.json").write_text(json.dumps(data))
    with pytest.raises(runtime.ModelMismatchError, match="model.pt: weights do not fit"):
        runtime.load(copy, backend="torch")


def test_bad_inputs(model_dir):
    b = runtime.load(model_dir, intra_op_threads=1)
    x = tiny_inputs(batch=1)
    with pytest.raises(runtime.InferenceInputError, match=r"missing \['lidar'\]"):
        b.infer({"image": x["image"]})
    with pytest.raises(runtime.InferenceInputError, match="dim 1 must be 6"):
        b.infer({"image": x["image"], "lidar": x["lidar"][:, :4]})
    with pytest.raises(runtime.InferenceInputError, match="dim 2 must be"):
        b.infer({"image": x["image"][:, :, :-1], "lidar": x["lidar"]})
    with pytest.raises(runtime.InferenceInputError, match="different batch sizes"):
        b.infer({"image": np.repeat(x["image"], 2, 0), "lidar": x["lidar"]})
    with pytest.raises(runtime.InferenceInputError, match="float"):
        b.infer({"image": x["image"].astype(np.int32), "lidar": x["lidar"]})
    out = b.infer({"image": x["image"].astype(np.float64), "lidar": x["lidar"]})  # cast, not refused
    assert out["score_map"].shape == (1, H, W)


def test_backend_and_device_errors(model_dir):
    with pytest.raises(ValueError, match="backend must be one of"):
        runtime.load(model_dir, backend="openvino")
    if not torch.cuda.is_available():
        with pytest.raises(runtime.BackendUnavailableError, match="CUDA"):
            runtime.load(model_dir, backend="torch", device="cuda")
    with pytest.raises(ValueError, match="fp16"):
        runtime.load(model_dir, backend="torch", precision="fp16")
    with pytest.raises(ValueError, match="intra_op_threads"):
        runtime.load(model_dir, intra_op_threads=0)
